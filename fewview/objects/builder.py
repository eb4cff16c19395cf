"""The fewview-objects dataset: CO3D-like multi-view renders of parametric, pybullet and household objects.

Recipes: ``parametric`` (the seven parametric categories + pybullet meshes, ``objects`` of them),
``household`` (every usable model of the Sweet Home 3D furniture libraries, textured, see
:mod:`fewview.objects.household`) and ``mixed`` (both: objects ``0 .. objects-1`` are exactly the
parametric recipe's, the household models follow).

Layout of a dataset folder::

    card.json                 command, seed, versions, settings, counts, splits, shard sha256s
    shard_00000.npz ...       rgba (n, V, H, W, 4) uint8, depth (n, V, H, W) float16 z-depth
                              (0 = empty), c2w (n, V, 4, 4) float32 (OpenCV), K (3, 3), index (n,),
                              category (n,) int into the card's ``category_names``
    contact_sheet.png         objects x views preview

Objects are rendered with a light fixed in the object's frame (Lambertian + ambient), so every
view of a surface point has the same colour. Object i is generated from ``default_rng([seed, i])``,
so shards are byte-identical for the same seed and settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras, intrinsics_matrix, look_at
from ..data.scene import DataError, Scene
from .household import MAX_FACES, HouseholdObject, SkipModel, catalog, make_household_object
from .raster import downsample, rasterize
from .shapes import CATEGORIES, ObjectModel, make_object

RECIPES = ("parametric", "household", "mixed")

LIGHT = np.array([0.45, -0.5, 0.74]) / np.linalg.norm([0.45, -0.5, 0.74])
AMBIENT = 0.35


@dataclass
class ObjectsConfig:
    objects: int = 64
    views: int = 32
    res: int = 64
    seed: int = 0
    fov_deg: float = 50.0
    supersample: int = 3
    shard_size: int = 64
    uniform_sphere: bool = False
    categories: tuple[str, ...] = tuple(CATEGORIES)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    recipe: str = "parametric"  # parametric | household | mixed
    household: str = ""  # folder of .sh3f libraries ("": $FEWVIEW_HOUSEHOLD, else Debian's install location)
    max_faces: int = MAX_FACES  # household models with more triangles are skipped


# --------------------------------------------------------------------- cameras
def object_cameras(rng: np.random.Generator, cfg: ObjectsConfig) -> Cameras:
    """A roughly circular CO3D-like trajectory (random radius, elevation 0-45 deg, tilt, jitter, look-at
    near the centre), or views spread uniformly over the sphere."""
    v = cfg.views
    radius = rng.uniform(2.7, 3.4)
    if cfg.uniform_sphere:
        k = np.arange(v) + 0.5
        z = 1 - 2 * k / v
        phi = np.pi * (1 + 5**0.5) * k + rng.uniform(0, 2 * np.pi)
        dirs = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], 1)
        up = np.tile([0.0, 0.0, 1.0], (v, 1))
        up[np.abs(dirs[:, 2]) > 0.99] = [0.0, 1.0, 0.0]
    else:
        elev = np.deg2rad(rng.uniform(0, 45))
        az = np.linspace(0, 2 * np.pi, v, endpoint=False) + rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.04, v)
        el = elev + rng.normal(0, 0.03, v)
        dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], 1)
        tilt_axis = np.array([np.cos(rng.uniform(0, 2 * np.pi)), 0.0, 0.0])
        tilt_axis[1] = np.sqrt(1 - tilt_axis[0] ** 2)
        ang = np.deg2rad(rng.uniform(0, 10))
        kx = np.array(
            [[0, -tilt_axis[2], tilt_axis[1]], [tilt_axis[2], 0, -tilt_axis[0]], [-tilt_axis[1], tilt_axis[0], 0]]
        )
        R = np.eye(3) + np.sin(ang) * kx + (1 - np.cos(ang)) * kx @ kx
        dirs = dirs @ R.T
        up = np.tile(R[:, 2], (v, 1))
    eye = dirs * radius * (1 + rng.normal(0, 0.02, (v, 1)))
    target = rng.normal(0, 0.03, (v, 3))
    c2w = look_at(torch.from_numpy(eye), torch.from_numpy(target), torch.from_numpy(up))
    f = 0.5 * cfg.res / math.tan(math.radians(cfg.fov_deg) / 2)
    K = intrinsics_matrix(f, f, cfg.res / 2, cfg.res / 2)
    return Cameras(c2w.float(), K.float().expand(v, 3, 3).clone(), torch.tensor([cfg.res, cfg.res]))


# ------------------------------------------------------------------- rendering
def render_object(obj: ObjectModel | HouseholdObject, cams: Cameras, supersample: int = 3):
    """RGBA uint8 (V, H, W, 4) with straight colour and exact coverage alpha, and z-depth float32 (V, H, W):
    the depth of the pixel-centre sample where it is covered, else the nearest covered sample (0 if none)."""
    if isinstance(obj, HouseholdObject):
        verts, faces, shade = obj.vertices, obj.faces, obj.shade
    else:
        verts = np.asarray(obj.mesh.vertices, dtype=np.float64)
        faces = np.asarray(obj.mesh.faces, dtype=np.int64)
        normals = np.asarray(obj.mesh.face_normals, dtype=np.float64)

        def shade(f, bary, p, eye):
            n = normals[f]
            n = np.where((n * (eye - p)).sum(1, keepdims=True) < 0, -n, n)  # two-sided: face the camera
            return obj.albedo(p, obj.face_part[f]) * (AMBIENT + (1 - AMBIENT) * np.clip(n @ LIGHT, 0, 1))[:, None]

    rgba_out, depth_out = [], []
    s = supersample
    for i in range(len(cams)):
        cam = cams[i]
        fid, bary, z = rasterize(verts, faces, cam, s)
        cov = fid >= 0
        f = fid[cov]
        b = bary[cov].astype(np.float64)
        p = np.einsum("nk,nkc->nc", b, verts[faces[f]])
        rgb_ss = np.zeros((*cov.shape, 3))
        rgb_ss[cov] = np.clip(shade(f, b, p, cam.centers[0].double().numpy()), 0, 1)
        alpha = downsample(cov.astype(np.float64), s)
        rgb = np.where(alpha[..., None] > 0, downsample(rgb_ss, s) / np.maximum(alpha[..., None], 1e-12), 0)
        zs = np.where(cov, z, np.inf).reshape(alpha.shape[0], s, alpha.shape[1], s)
        centre = zs[:, s // 2, :, s // 2]
        nearest = zs.min(axis=(1, 3))
        depth = np.where(np.isfinite(centre), centre, np.where(np.isfinite(nearest), nearest, 0.0))
        rgba = np.concatenate([rgb, alpha[..., None]], -1)
        rgba_out.append(np.round(rgba * 255).astype(np.uint8))
        depth_out.append(depth.astype(np.float32))
    return np.stack(rgba_out), np.stack(depth_out)


def truncated_views(obj: ObjectModel, cams: Cameras) -> list[int]:
    """Views in which some vertex projects outside the image (the object is cut off)."""
    v = obj.vertices if isinstance(obj, HouseholdObject) else obj.mesh.vertices
    uv, z = cams.project(torch.from_numpy(np.asarray(v, dtype=np.float32)))
    h, w = cams.height, cams.width
    bad = (uv[..., 0] < 0) | (uv[..., 0] > w) | (uv[..., 1] < 0) | (uv[..., 1] > h) | (z <= 0)
    return bad.any(dim=1).nonzero()[:, 0].tolist()


# --------------------------------------------------------------------- builder
def household_models(cfg: ObjectsConfig) -> list:
    """The (library, catalog entry) of each household object of the recipe, in index order."""
    if cfg.recipe == "parametric":
        return []
    if cfg.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {cfg.recipe!r}; choose one of {', '.join(RECIPES)}")
    return _catalog(cfg.household)


_CATALOGS: dict[str, list] = {}


def _catalog(source: str) -> list:
    if source not in _CATALOGS:
        _CATALOGS[source] = catalog(source or None)
    return _CATALOGS[source]


def num_parametric(cfg: ObjectsConfig) -> int:
    return 0 if cfg.recipe == "household" else cfg.objects


def num_objects(cfg: ObjectsConfig) -> int:
    return num_parametric(cfg) + len(household_models(cfg))


def category_names(cfg: ObjectsConfig) -> list[str]:
    """Parametric categories (when the recipe has them), then the household categories (sorted)."""
    head = list(cfg.categories) if num_parametric(cfg) else []
    return head + sorted({e.category for _, e in household_models(cfg)})


def object_category(cfg: ObjectsConfig, index: int) -> str:
    n = num_parametric(cfg)
    if index < n:
        return cfg.categories[index % len(cfg.categories)]
    return household_models(cfg)[index - n][1].category


def generate(cfg: ObjectsConfig, index: int) -> tuple[ObjectModel | HouseholdObject, Cameras]:
    """Object ``index`` of the recipe and its cameras; a household model that cannot be used raises
    :class:`~fewview.objects.household.SkipModel`."""
    rng = np.random.default_rng([cfg.seed, index])
    n = num_parametric(cfg)
    if index < n:
        obj = make_object(object_category(cfg, index), rng)
    else:
        lib, entry = household_models(cfg)[index - n]
        obj = make_household_object(lib, entry, rng, cfg.max_faces, texture_size=max(256, 4 * cfg.res))
    return obj, object_cameras(rng, cfg)


def splits(cfg: ObjectsConfig) -> dict[str, list[int]]:
    """Train/val/test by object (so by model for household objects), balanced per category, seeded. The
    parametric part is the same for every recipe with the same seed and ``objects``."""
    out = {"train": [], "val": [], "test": []}
    n = num_parametric(cfg)
    groups = [([i for i in range(n) if i % len(cfg.categories) == k], 10**6 + k) for k in range(len(cfg.categories))]
    house = household_models(cfg)
    for k, c in enumerate(sorted({e.category for _, e in house})):
        groups.append(([n + j for j, (_, e) in enumerate(house) if e.category == c], 2 * 10**6 + k))
    for ids, salt in groups:
        ids = [ids[j] for j in np.random.default_rng([cfg.seed, salt]).permutation(len(ids))]
        n_val, n_test = round(len(ids) * cfg.split[1]), round(len(ids) * cfg.split[2])
        out["test"] += ids[:n_test]
        out["val"] += ids[n_test : n_test + n_val]
        out["train"] += ids[n_test + n_val :]
    return {k: sorted(v) for k, v in out.items()}


def held_out_views(cfg: ObjectsConfig, n: int, exclude: Collection[int] = (), every: int = 1):
    """Regenerate the first ``n`` test-split objects of the recipe ``cfg`` that are not in ``exclude`` (e.g. the
    training objects of another set: an object index gives the same object in every recipe with the same seed),
    rendering every ``every``-th view at ``cfg.res``. Yields (index, images on white (V, 3, H, W) in [0, 1],
    cameras, depth (V, 1, H, W), 0 on the background)."""
    skip, done = set(exclude), 0
    for oi in [i for i in splits(cfg)["test"] if i not in skip]:
        if done == n:
            return
        try:
            obj, cams = generate(cfg, oi)
        except SkipModel:
            continue
        done += 1
        cams = cams[::every]
        rgba, depth = render_object(obj, cams, cfg.supersample)
        x = torch.from_numpy(rgba).float().div(255).permute(0, 3, 1, 2)
        yield oi, x[:, :3] * x[:, 3:] + (1 - x[:, 3:]), cams, torch.from_numpy(depth).float()[:, None]


def recipe(root: str | Path) -> ObjectsConfig:
    """The ``ObjectsConfig`` a fewview-objects folder was built with (its card)."""
    from ..pretrained import config_from_dict

    return config_from_dict(ObjectsConfig, _card(Path(root))["config"])


def build(cfg: ObjectsConfig, out: str | Path, progress: bool = True) -> dict:
    """Render the dataset into ``out`` (shards, card.json, contact_sheet.png); returns the card. A household
    model that cannot be used is left out and listed under ``skipped`` with its reason; nothing is written
    outside ``out``."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    total, names = num_objects(cfg), category_names(cfg)  # finds the household libraries before writing anything
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    house, n_param = household_models(cfg), num_parametric(cfg)
    shards, truncated, skipped = [], {}, {}
    bar = tqdm(total=total, desc="objects", unit="obj", disable=not progress)
    for start in range(0, total, cfg.shard_size):
        ids = []
        rgba, depth, c2w, cats = [], [], [], []
        for i in range(start, min(start + cfg.shard_size, total)):
            bar.update(1)
            try:
                obj, cams = generate(cfg, i)
            except SkipModel as e:
                skipped[i] = str(e)
                continue
            bad = truncated_views(obj, cams)
            if bad:
                truncated[i] = bad
            a, d = render_object(obj, cams, cfg.supersample)
            ids.append(i)
            rgba.append(a)
            depth.append(d.astype(np.float16))
            c2w.append(cams.c2w.numpy().astype(np.float32))
            cats.append(names.index(obj.category))
        if not ids:
            continue
        path = out / f"shard_{start // cfg.shard_size:05d}.npz"
        np.savez_compressed(
            path,
            rgba=np.stack(rgba),
            depth=np.stack(depth),
            c2w=np.stack(c2w),
            K=cams.K[0].numpy().astype(np.float32),
            index=np.array(ids, dtype=np.int64),
            category=np.array(cats, dtype=np.int64),
        )
        shards.append(
            {"file": path.name, "objects": [ids[0], ids[-1]], "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        )
    bar.close()
    kept = [i for i in range(total) if i not in skipped]
    card = {
        "name": "fewview-objects",
        "command": " ".join(sys.argv),
        "config": asdict(cfg),
        "recipe": cfg.recipe,
        "versions": {"numpy": np.__version__, "torch": torch.__version__},
        "category_names": names,
        "counts": {c: sum(1 for i in kept if object_category(cfg, i) == c) for c in names},
        "splits": {k: [i for i in v if i not in skipped] for k, v in splits(cfg).items()},
        "truncated": {str(k): v for k, v in truncated.items()},
        "camera_convention": "OpenCV c2w, pixel centres at +0.5 (fewview)",
        "fov_deg": cfg.fov_deg,
        "shards": shards,
        "seconds": time.perf_counter() - t0,
    }
    if house:
        card["household"] = {
            "libraries": sorted({Path(lib).name for lib, _ in house}),
            "models": {str(n_param + j): e.card() for j, (_, e) in enumerate(house)},
            "skipped": {str(i): reason for i, reason in sorted(skipped.items())},
            "licenses": _license_summary([e for j, (_, e) in enumerate(house) if n_param + j not in skipped]),
        }
    (out / "card.json").write_text(json.dumps(card, indent=1))
    contact_sheet(out, min(8, len(kept)), min(8, cfg.views))
    return card


def _license_summary(entries) -> dict:
    out: dict[str, dict] = {}
    for e in entries:
        d = out.setdefault(e.license, {"models": 0, "libraries": set(), "creators": set()})
        d["models"] += 1
        d["libraries"].add(e.library)
        d["creators"].add(e.creator)
    return {k: {"models": v["models"], "libraries": sorted(v["libraries"]), "creators": sorted(v["creators"])}
            for k, v in sorted(out.items())}  # fmt: skip


# ---------------------------------------------------------------------- reading
def _card(root: Path) -> dict:
    p = root / "card.json"
    if not p.is_file():
        raise DataError(
            p, "", "not a fewview-objects dataset (card.json missing); build one with `fewview data objects`"
        )
    return json.loads(p.read_text())


def load_object(root: str | Path, index: int) -> Scene:
    """Object ``index`` as a :class:`Scene` (RGB + alpha masks + depths, background "alpha")."""
    root = Path(root)
    card = _card(root)
    skipped = card.get("household", {}).get("skipped", {})
    if str(index) in skipped:
        raise DataError(root / "card.json", "household.skipped", f"object {index} was skipped: {skipped[str(index)]}")
    names = card.get("category_names", card["config"]["categories"])
    for sh in card["shards"]:
        lo, hi = sh["objects"]
        if lo <= index <= hi:
            with np.load(root / sh["file"]) as z:
                hit = np.flatnonzero(z["index"] == index)
                if not len(hit):
                    continue
                j = int(hit[0])
                rgba, depth, c2w, K = z["rgba"][j], z["depth"][j], z["c2w"][j], z["K"]
                cat = names[int(z["category"][j])]
            img = torch.from_numpy(rgba).float().div(255).permute(0, 3, 1, 2)
            v, res = len(c2w), img.shape[-1]
            cams = Cameras(torch.from_numpy(c2w), torch.from_numpy(K).expand(v, 3, 3).clone(), torch.tensor([res, res]))
            return Scene(
                images=img[:, :3].contiguous(),
                cameras=cams,
                masks=img[:, 3:].contiguous(),
                depths=torch.from_numpy(depth.astype(np.float32))[:, None],
                background="alpha",
                frames=[f"{root / sh['file']}#object={index},view={k}" for k in range(v)],
                name=f"object_{index:05d}",
                meta={"format": "fewview-objects", "category": cat, "index": index},
            )
    raise DataError(
        root / "card.json", "shards", f"object {index} is not in this dataset ({card['config']['objects']} objects)"
    )


def export_blender(root: str | Path, index: int, out: str | Path) -> Path:
    """Write object ``index`` as Blender ``transforms_train.json`` + RGBA PNGs for inspection."""
    from PIL import Image

    from ..cameras.convert import to_opengl

    scene = load_object(root, index)
    out = Path(out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    frames = []
    gl = to_opengl(scene.cameras)
    for k in range(len(scene)):
        rgba = torch.cat([scene.images[k], scene.masks[k]]).permute(1, 2, 0).mul(255).round().byte().numpy()
        Image.fromarray(rgba, "RGBA").save(out / "train" / f"r_{k}.png")
        frames.append({"file_path": f"./train/r_{k}", "transform_matrix": gl[k].tolist()})
    meta = {"camera_angle_x": float(scene.cameras.fov_x[0]), "frames": frames}
    (out / "transforms_train.json").write_text(json.dumps(meta, indent=1))
    return out


def contact_sheet(root: str | Path, n_objects: int = 8, n_views: int = 8, ids=None, name="contact_sheet.png") -> Path:
    """objects x views grid on white, written to ``name``: the objects ``ids``, by default ``n_objects`` spread
    evenly over the dataset."""
    from PIL import Image

    root = Path(root)
    if ids is None:
        card = _card(root)
        have = sorted(i for sp in card["splits"].values() for i in sp)
        ids = [have[int(k)] for k in np.linspace(0, len(have) - 1, n_objects).round()] if have else []
    rows = []
    for i in ids:
        s = load_object(root, i)
        idx = np.linspace(0, len(s) - 1, n_views).round().astype(int)
        img = s.composite(1.0)[idx]
        rows.append(torch.cat(list(img), dim=2))
    sheet = torch.cat(rows, dim=1).permute(1, 2, 0).mul(255).round().byte().numpy()
    path = root / name
    Image.fromarray(sheet).save(path)
    return path


def write_example(
    out: str | Path, index: int = 5, n_inputs: int = 3, n_held_out: int = 9, res: int = 64, seed: int = 0
) -> Path:
    """A small Blender-format example object for the demo: ``n_inputs`` input views chosen by the
    ``objects-<k>view`` rule (``transforms_train.json``) and ``n_held_out`` evenly spaced held-out views
    (``transforms_test.json``), as RGBA PNGs."""
    from PIL import Image

    from ..cameras.convert import to_opengl
    from ..data.protocols import objects_views

    cfg = ObjectsConfig(objects=index + 1, views=32, res=res, seed=seed)
    obj, cams = generate(cfg, index)
    rgba, _ = render_object(obj, cams, cfg.supersample)
    split = objects_views(index, n_inputs, cfg.views)
    rest = list(split.evaluation)
    held = [rest[int(round(j))] for j in np.linspace(0, len(rest) - 1, n_held_out)]
    out = Path(out)
    gl = to_opengl(cams)
    for name, ids in (("train", list(split.inputs)), ("test", held)):
        (out / name).mkdir(parents=True, exist_ok=True)
        frames = []
        for k in ids:
            Image.fromarray(rgba[k], "RGBA").save(out / name / f"view_{k:02d}.png", optimize=True)
            frames.append({"file_path": f"./{name}/view_{k:02d}", "transform_matrix": gl[k].tolist()})
        meta = {"camera_angle_x": float(cams.fov_x[0]), "frames": frames}
        (out / f"transforms_{name}.json").write_text(json.dumps(meta, indent=1))
    card = {"category": obj.category, "index": index, "seed": seed, "res": res, "inputs": list(split.inputs),
            "held_out": held, "command": " ".join(sys.argv)}  # fmt: skip
    (out / "example.json").write_text(json.dumps(card, indent=1))
    return out
