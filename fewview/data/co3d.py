"""CO3Dv2: ``<root>/<category>/{frame,sequence}_annotations.jgz``, ``set_lists/``, images, masks, depths.

Cameras are PyTorch3D ``PerspectiveCameras`` with NDC intrinsics ("ndc_isotropic" or
"ndc_norm_image_bounds"). SparseFusion's preprocessing is available as ``box_crop``: a box
around the mask (threshold 0.4, lowered until the mask is non-empty) grown by 30 % context,
cropped, resized to fit a square ``image_size`` keeping the aspect ratio, and zero-padded;
``meta["valid"]`` marks the un-padded region.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..cameras import Cameras
from ..cameras.convert import from_pytorch3d
from .io import load_image, read_json
from .scene import DataError, Scene, validate_cameras

# SparseFusion's ten categories.
CO3D_TEN = ("donut", "apple", "hydrant", "vase", "cake", "ball", "bench", "suitcase", "teddybear", "plant")


@dataclass
class BoxCrop:
    """SparseFusion's crop: mask threshold, context ratio and output side in pixels."""

    mask_threshold: float = 0.4
    context: float = 0.3
    image_size: int = 256


def _category_dir(root: Path, category: str) -> Path:
    d = root / category
    if not d.is_dir():
        raise DataError(d, "", "category folder not found")
    return d


def list_sequences(root: str | Path, category: str, subset: str = "fewview_dev", split: str = "test") -> list[str]:
    """Sequence names in ``set_lists/set_lists_<subset>.json[split]`` (sorted, unique)."""
    path = _category_dir(Path(root), category) / "set_lists" / f"set_lists_{subset}.json"
    lists = read_json(path)
    if not isinstance(lists, dict) or split not in lists:
        raise DataError(path, split, f"missing (have {sorted(lists) if isinstance(lists, dict) else 'nothing'})")
    return sorted({row[0] for row in lists[split]})


def _mask_bbox(mask: np.ndarray, thr: float) -> tuple[float, float, float, float]:
    """(x0, y0, w, h) of the mask above ``thr``; the threshold drops by 0.05 until something is found."""
    sel = mask > thr
    while sel.sum() <= 1 and thr > 0:
        thr -= 0.05
        sel = mask > thr
    if sel.sum() == 0:
        h, w = mask.shape
        return 0.0, 0.0, float(w), float(h)
    xs, ys = np.flatnonzero(sel.any(0)), np.flatnonzero(sel.any(1))
    return float(xs[0]), float(ys[0]), float(xs[-1] + 1 - xs[0]), float(ys[-1] + 1 - ys[0])


def crop_box(mask: np.ndarray, crop: BoxCrop) -> np.ndarray:
    """Integer crop box (x0, y0, x1, y1), clamped to the image, as SparseFusion/implicitron compute it."""
    x, y, w, h = _mask_bbox(mask, crop.mask_threshold)
    c = crop.context
    x, y, w, h = x - w * c / 2, y - h * c / 2, max(w * (1 + c), 2), max(h * (1 + c), 2)
    H, W = mask.shape
    box = np.array([x, y, x + w, y + h])
    box = np.round(np.clip(box, 0, [W, H, W, H])).astype(np.int64)
    return box


def _resize_pad(x: torch.Tensor, size: int, mode: str) -> tuple[torch.Tensor, float]:
    """Resize (C, h, w) to fit inside size x size keeping aspect ratio, zero-pad bottom/right."""
    h, w = x.shape[-2:]
    s = min(size / h, size / w)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    kw = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
    y = F.interpolate(x[None], size=(nh, nw), mode=mode, **kw)[0]
    out = torch.zeros(x.shape[0], size, size, dtype=x.dtype)
    out[:, :nh, :nw] = y
    return out, s


def _sequence_info(cdir: Path, sequence: str) -> dict:
    """Quality score from ``sequence_annotations.jgz`` when present."""
    path = cdir / "sequence_annotations.jgz"
    if not path.is_file():
        return {}
    for s in read_json(path):
        if isinstance(s, dict) and s.get("sequence_name") == sequence:
            return {"viewpoint_quality_score": s.get("viewpoint_quality_score")}
    raise DataError(path, "sequence_name", f"sequence {sequence!r} not listed")


def _load_depth(path: Path, scale: float) -> np.ndarray:
    """CO3D depth maps: 16-bit PNGs whose bits are float16 values."""
    with Image.open(path) as im:
        raw = np.asarray(im, dtype=np.uint16)
    return raw.view(np.float16).astype(np.float32) * scale


def load_co3d_sequence(
    root: str | Path,
    category: str,
    sequence: str,
    frames: list[int] | None = None,
    box_crop: BoxCrop | None = None,
    load_depth: bool = False,
) -> Scene:
    """Load one CO3Dv2 sequence (frames sorted by timestamp).

    Args:
        root: dataset root containing category folders.
        frames: frame numbers to keep (all by default).
        box_crop: SparseFusion's crop (e.g. ``BoxCrop()``), or ``None`` for full frames (which must share a size).
        load_depth: also read depth maps (``depth.path``, scaled by ``scale_adjustment``).
    """
    root = Path(root)
    cdir = _category_dir(root, category)
    fa_path = cdir / "frame_annotations.jgz"
    annots = read_json(fa_path)
    if not isinstance(annots, list):
        raise DataError(fa_path, "", "expected a list of frame annotations")
    entries = [a for a in annots if isinstance(a, dict) and a.get("sequence_name") == sequence]
    if frames is not None:
        keep = set(frames)
        entries = [a for a in entries if a.get("frame_number") in keep]
    if not entries:
        raise DataError(fa_path, "sequence_name", f"no frames for sequence {sequence!r}")
    entries.sort(key=lambda a: (a.get("frame_timestamp", 0.0), a.get("frame_number", 0)))

    images, masks, depths, valids, Rs, Ts, fs, ps, sizes, sources = [], [], [], [], [], [], [], [], [], []
    for a in entries:
        fld = f"frame {a.get('frame_number')}"
        try:
            vp = a["viewpoint"]
            img_rel, hw = a["image"]["path"], a["image"]["size"]
            R, T = np.asarray(vp["R"], dtype=np.float64), np.asarray(vp["T"], dtype=np.float64)
            f = np.asarray(vp["focal_length"], dtype=np.float64)
            p = np.asarray(vp["principal_point"], dtype=np.float64)
            fmt = vp.get("intrinsics_format", "ndc_norm_image_bounds")
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(fa_path, fld, f"malformed annotation ({e})") from None
        if not (np.isfinite(R).all() and np.isfinite(T).all() and np.isfinite(f).all() and np.isfinite(p).all()):
            raise DataError(fa_path, f"{fld}.viewpoint", "contains NaN or Inf")
        arr = load_image(root / img_rel, f"{fld}.image.path", source=fa_path)[..., :3]
        H, W = int(hw[0]), int(hw[1])
        if arr.shape[:2] != (H, W):
            raise DataError(
                fa_path, f"{fld}.image.size", f"image is {arr.shape[1]}x{arr.shape[0]}, annotation says {W}x{H}"
            )
        if "mask" not in a or not a["mask"].get("path"):
            raise DataError(fa_path, f"{fld}.mask.path", "missing")
        mask = load_image(root / a["mask"]["path"], f"{fld}.mask.path", source=fa_path)[..., 0]
        if mask.shape != (H, W):
            raise DataError(fa_path, f"{fld}.mask.path", f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {W}x{H}")
        # NDC -> pixels of the original image; CO3D's "ndc_norm_image_bounds" scales x and y separately.
        if fmt == "ndc_isotropic":
            scale = np.array([min(H, W) / 2, min(H, W) / 2])
        elif fmt == "ndc_norm_image_bounds":
            scale = np.array([W / 2, H / 2])
        else:
            raise DataError(fa_path, f"{fld}.viewpoint.intrinsics_format", f"unknown format {fmt!r}")
        f_px, p_px = f * scale, np.array([W / 2, H / 2]) - p * scale
        # Express as isotropic NDC of the original image for from_pytorch3d.
        half = min(H, W) / 2
        f_ndc, p_ndc = f_px / half, (np.array([W / 2, H / 2]) - p_px) / half
        Rs.append(R), Ts.append(T), fs.append(f_ndc), ps.append(p_ndc), sizes.append((H, W))
        img_t = torch.from_numpy(arr).permute(2, 0, 1)
        mask_t = torch.from_numpy(mask)[None]
        depth_t = None
        if load_depth:
            dpath = root / a["depth"]["path"]
            if not dpath.is_file():
                raise DataError(fa_path, f"{fld}.depth.path", f"file not found: {dpath}")
            depth_t = torch.from_numpy(_load_depth(dpath, float(a["depth"].get("scale_adjustment", 1.0))))[None]
        valid = torch.ones_like(mask_t)
        images.append(img_t), masks.append(mask_t), depths.append(depth_t), valids.append(valid)
        sources.append(str(root / img_rel))

    cams = from_pytorch3d(np.stack(Rs), np.stack(Ts), np.stack(fs), np.stack(ps), np.array(sizes))
    validate_cameras(cams, fa_path, "viewpoint")
    cams = Cameras(cams.c2w.float(), cams.K.float(), cams.size)

    if box_crop is not None:
        out_cams = []
        for i in range(len(images)):
            box = crop_box(masks[i][0].numpy(), box_crop)
            x0, y0, x1, y1 = (int(v) for v in box)
            cam = cams[i].crop(torch.tensor([x0, y0, x1, y1]))
            images[i], s = _resize_pad(images[i][:, y0:y1, x0:x1], box_crop.image_size, "bilinear")
            masks[i], _ = _resize_pad(masks[i][:, y0:y1, x0:x1], box_crop.image_size, "bilinear")
            valids[i], _ = _resize_pad(valids[i][:, y0:y1, x0:x1], box_crop.image_size, "nearest")
            if depths[i] is not None:
                depths[i], _ = _resize_pad(depths[i][:, y0:y1, x0:x1], box_crop.image_size, "nearest")
            K = cam.K.clone()
            K[:, :2] *= s
            out_cams.append(Cameras(cam.c2w, K, torch.tensor([box_crop.image_size] * 2)))
        cams = Cameras.cat(out_cams)
    elif len({tuple(im.shape) for im in images}) > 1:
        raise DataError(fa_path, "image.size", "frames differ in size; use box_crop to bring them to one size")

    return Scene(
        images=torch.stack(images).clamp(0, 1),
        cameras=cams,
        masks=torch.stack(masks).clamp(0, 1),
        depths=torch.stack(depths) if load_depth else None,
        valid=torch.stack(valids),
        background="photo",
        frames=sources,
        name=f"{category}/{sequence}",
        meta={
            "format": "co3d",
            "category": category,
            "sequence": sequence,
            "frame_numbers": [int(a["frame_number"]) for a in entries],
            **_sequence_info(cdir, sequence),
        },
    )
