"""Camera poses for your own photos: structure from motion with pycolmap (the optional extra ``[colmap]``).

``estimate_poses`` runs COLMAP's pipeline -- SIFT features, exhaustive (or sequential) matching with
geometric verification, incremental mapping -- then undistorts the photos to pinhole cameras and writes a
scene folder fewview reads like any COLMAP reconstruction::

    SCENE/images/<photo>        undistorted photos (pinhole cameras, the originals are never modified)
    SCENE/sparse/0/*.bin        cameras, poses and sparse points
    SCENE/masks/<stem>.png      the optional object masks, undistorted like their photos
    SCENE/poses.json            what was registered, what was dropped and why, the settings used

The scene is built in a hidden folder beside ``SCENE`` and moved into place only when everything
succeeded: a failure (too few photos registered, no overlap) leaves nothing behind and raises
:class:`PosesError` with one line naming the cause and what to try.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .io import load_mask

PHOTO_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
INSTALL_HINT = 'pip install "fewview[colmap]" (or pip install -e ".[colmap]" in a checkout)'


class PosesError(RuntimeError):
    """Structure from motion could not produce a usable scene; the message is one line."""


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class PosesOptions:
    camera_model: str = _opt("SIMPLE_RADIAL", "COLMAP camera model to estimate; the scene is undistorted to PINHOLE")
    single_camera: bool = _opt(True, "one camera for every photo (same device and zoom); no: one per photo")
    max_image_size: int = _opt(1600, "longest side used for features (photos are written at full size)")
    matcher: str = _opt("exhaustive", "exhaustive (every pair; small sets) | sequential (video frames, in order)")
    min_registered: int = _opt(0, "photos that must be posed (0: all when <= 4 photos, else half and >= 3)")
    seed: int = _opt(0, "random seed of the mapper")
    num_threads: int = _opt(-1, "threads (-1: every core)")


def _pycolmap():
    try:
        import pycolmap
    except ImportError:
        raise PosesError(f"fewview poses needs pycolmap: {INSTALL_HINT}") from None
    return pycolmap


def list_photos(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise PosesError(f"{folder}: not a folder of photos")
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_EXTS)
    if len(names) < 2:
        raise PosesError(f"{folder}: found {len(names)} photo(s) ({', '.join(PHOTO_EXTS)}); need at least 2")
    from PIL import Image

    for n in names:
        try:
            with Image.open(folder / n) as im:
                im.verify()
        except Exception as e:  # noqa: BLE001 - any decoder failure is the same answer
            raise PosesError(f"{folder / n}: cannot read the photo ({type(e).__name__}: {e})") from None
    return names


def find_mask(masks: Path, name: str) -> Path | None:
    """The mask of photo ``name``: ``<stem>.png``, COLMAP's ``<name>.png``, or a file with the photo's name."""
    for cand in (Path(name).stem + ".png", name + ".png", name):
        if (masks / cand).is_file():
            return masks / cand
    return None


def required_registered(n: int, opts: PosesOptions) -> int:
    if opts.min_registered > 0:
        return min(opts.min_registered, n)
    return n if n <= 4 else max(3, (n + 1) // 2)


def _undistort_mask(mask: np.ndarray, src, dst) -> np.ndarray:
    """Resample ``mask`` (H, W) seen by COLMAP camera ``src`` into the undistorted camera ``dst`` (bilinear)."""
    import torch
    import torch.nn.functional as F

    u, v = np.meshgrid(np.arange(dst.width) + 0.5, np.arange(dst.height) + 0.5)
    pts = np.stack([u.ravel(), v.ravel()], 1).astype(np.float64)
    xy = dst.cam_from_img(pts)
    uv = src.img_from_cam(np.concatenate([xy, np.ones((len(xy), 1))], 1), False)
    grid = torch.from_numpy(uv).float()
    grid[:, 0] = grid[:, 0] / src.width * 2 - 1  # pixel centres at +0.5, as align_corners=False
    grid[:, 1] = grid[:, 1] / src.height * 2 - 1
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    out = F.grid_sample(m, grid.view(1, dst.height, dst.width, 2), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def _fresh_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        if not overwrite:
            raise PosesError(f"{out}: already exists; choose another --out or pass --overwrite")
        if not (out / "poses.json").is_file():
            raise PosesError(f"{out}: exists and was not written by fewview poses; refusing to overwrite it")


def estimate_poses(
    photos: str | Path,
    out: str | Path,
    masks: str | Path | None = None,
    options: PosesOptions | None = None,
    overwrite: bool = False,
    verbose: bool = False,
    progress: bool = True,
) -> dict:
    """Pose the photos in ``photos`` and write a COLMAP scene to ``out``; returns the ``poses.json`` record."""
    opts = options or PosesOptions()
    pycolmap = _pycolmap()
    photos, out = Path(photos), Path(out)
    names = list_photos(photos)
    mask_files: dict[str, Path] = {}
    if masks is not None:
        masks = Path(masks)
        if not masks.is_dir():
            raise PosesError(f"{masks}: masks folder not found")
        missing = [n for n in names if find_mask(masks, n) is None]
        if missing:
            raise PosesError(f"{masks}: no mask for {len(missing)} photo(s), e.g. {missing[0]} "
                             f"(expected {Path(missing[0]).stem}.png)")  # fmt: skip
        mask_files = {n: find_mask(masks, n) for n in names}  # type: ignore[misc]
    models = [m for m in pycolmap.CameraModelId.__members__ if m != "INVALID"]
    if opts.camera_model not in models:
        raise PosesError(f"camera model {opts.camera_model!r}: choose one of {', '.join(models)}")
    if opts.matcher not in ("exhaustive", "sequential"):
        raise PosesError(f"matcher: expected 'exhaustive' or 'sequential', got {opts.matcher!r}")
    _fresh_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    if not verbose:
        pycolmap.logging.minloglevel = 3  # fatal only: failures are reported as PosesError
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    try:
        timings = {}
        t = time.perf_counter()
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = opts.camera_model
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.max_image_size = opts.max_image_size
        extraction.num_threads = opts.num_threads
        db = work / "database.db"
        mode = pycolmap.CameraMode.SINGLE if opts.single_camera else pycolmap.CameraMode.PER_IMAGE
        try:
            pycolmap.extract_features(db, photos, names, camera_mode=mode, reader_options=reader,
                                      extraction_options=extraction, device=pycolmap.Device.cpu)  # fmt: skip
        except (RuntimeError, ValueError) as e:
            raise PosesError(f"feature extraction failed: {str(e).strip().splitlines()[-1]}") from None
        timings["features"] = time.perf_counter() - t
        say(f"features: {len(names)} photos ({timings['features']:.1f} s)")

        t = time.perf_counter()
        if opts.matcher == "exhaustive":
            pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
        else:
            pycolmap.match_sequential(db, device=pycolmap.Device.cpu)
        with pycolmap.Database.open(db) as d:
            verified = d.num_verified_image_pairs()
        timings["matching"] = time.perf_counter() - t
        say(f"matching: {verified} photo pairs overlap ({timings['matching']:.1f} s)")
        if verified == 0:
            raise PosesError(f"no overlap: no two of the {len(names)} photos share enough matching features; "
                             "photograph one object from nearby viewpoints (<= 30 deg apart) with textured "
                             "surfaces in view")  # fmt: skip

        t = time.perf_counter()
        mapping = pycolmap.IncrementalPipelineOptions()
        mapping.random_seed = opts.seed
        mapping.num_threads = opts.num_threads
        from tqdm import tqdm

        bar = tqdm(total=len(names), desc="mapping", unit="photo", leave=False, disable=not progress)
        try:
            recs = pycolmap.incremental_mapping(db, photos, work / "sparse", mapping,
                                                next_image_callback=lambda: bar.update(1))  # fmt: skip
        except (RuntimeError, ValueError) as e:
            raise PosesError(f"mapping failed: {str(e).strip().splitlines()[-1]}") from None
        finally:
            bar.close()
        timings["mapping"] = time.perf_counter() - t
        need = required_registered(len(names), opts)
        if not recs:
            raise PosesError(f"no reconstruction: no pair among the {len(names)} photos ({verified} overlapping "
                             "pairs) gave a reliable start; add photos between the existing ones")  # fmt: skip
        key = max(recs, key=lambda k: recs[k].num_reg_images())
        rec = recs[key]
        posed = sorted(rec.images[i].name for i in rec.reg_image_ids())
        dropped = [n for n in names if n not in set(posed)]
        if len(posed) < need:
            raise PosesError(
                f"too few photos registered: {len(posed)} of {len(names)} (need {need}); not posed: "
                f"{', '.join(dropped[:4])}{' ...' if len(dropped) > 4 else ''}; add overlapping photos or "
                f"pass --min-registered {len(posed)}"
            )
        err = rec.compute_mean_reprojection_error()
        say(f"mapping: {len(posed)}/{len(names)} photos posed, {rec.num_points3D()} points, "
            f"reprojection error {err:.2f} px ({timings['mapping']:.1f} s)")  # fmt: skip
        if dropped:
            say(f"warning: not posed (left out of the scene): {', '.join(dropped)}")

        t = time.perf_counter()
        model_dir = work / "sparse" / str(key)
        scene = work / "scene"
        pycolmap.undistort_images(scene, model_dir, photos, image_names=posed)
        (scene / "sparse" / "0").mkdir()
        for f in ("cameras.bin", "images.bin", "points3D.bin", "rigs.bin", "frames.bin"):
            if (scene / "sparse" / f).is_file():
                os.replace(scene / "sparse" / f, scene / "sparse" / "0" / f)
        for extra in ("stereo", "run-colmap-geometric.sh", "run-colmap-photometric.sh"):
            p = scene / extra
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        if mask_files:
            _write_masks(pycolmap, rec, scene, mask_files)
        timings["undistort"] = time.perf_counter() - t
        undist = pycolmap.Reconstruction(scene / "sparse" / "0")
        record = {
            "photos": str(photos.resolve()),
            "num_photos": len(names),
            "posed": posed,
            "dropped": dropped,
            "num_points": int(rec.num_points3D()),
            "reprojection_error_px": float(rec.compute_mean_reprojection_error()),
            "estimated_cameras": {str(c): {"model": cam.model_name, "params": [float(p) for p in cam.params]}
                                  for c, cam in rec.cameras.items()},  # fmt: skip
            "written_cameras": "PINHOLE (undistorted)",
            "overlapping_pairs": int(verified),
            "masks": bool(mask_files),
            "options": asdict(opts),
            "seconds": {k: round(v, 2) for k, v in timings.items()},
            "pycolmap": pycolmap.__version__,
        }
        assert undist.num_reg_images() == len(posed)
        (scene / "poses.json").write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(scene, out)
        say(f"wrote {out} ({len(posed)} posed photos)")
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_masks(pycolmap, rec, scene: Path, mask_files: dict[str, Path]) -> None:
    import imageio.v3 as iio

    undist = pycolmap.Reconstruction(scene / "sparse" / "0")
    (scene / "masks").mkdir()
    for iid in undist.reg_image_ids():
        im = undist.images[iid]
        src = rec.cameras[rec.find_image_with_name(im.name).camera_id]
        m = _undistort_mask(load_mask(mask_files[im.name]), src, undist.cameras[im.camera_id])
        iio.imwrite(scene / "masks" / (Path(im.name).stem + ".png"), np.round(np.clip(m, 0, 1) * 255).astype(np.uint8))
