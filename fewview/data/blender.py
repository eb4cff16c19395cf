"""Blender / NeRF-synthetic ``transforms_{split}.json`` and nerfstudio ``transforms.json``.

Poses are OpenGL camera-to-world (x right, y up, z back). NeRF-synthetic gives one
``camera_angle_x`` for all frames; nerfstudio gives ``fl_x, fl_y, cx, cy, w, h`` at the top
level or per frame (per-frame values win).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras, intrinsics_matrix
from ..cameras.convert import from_opengl
from .io import downscale_scene, load_image, read_json, stack_images
from .scene import DataError, Scene, validate_cameras

_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")


def _matrix(value, path, field) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(path, field, "not a numeric matrix") from None
    if m.shape not in ((4, 4), (3, 4)):
        raise DataError(path, field, f"expected a 4x4 matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise DataError(path, field, "contains NaN or Inf")
    return m[:3]


def _resolve_image(root: Path, file_path: str) -> Path:
    p = root / file_path
    if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".exr", ".webp"):
        return p
    return p.with_name(p.name + ".png")  # NeRF-synthetic omits the extension


def _intrinsics(meta: dict, frame: dict, img_hw: tuple[int, int], path, field):
    """(K (3,3), declared (h, w) or None) for a frame; raises when nothing describes the camera."""
    vals = {k: frame.get(k, meta.get(k)) for k in _INTRINSIC_KEYS}
    h_img, w_img = img_hw
    declared = None
    if vals["w"] is not None or vals["h"] is not None:
        declared = (
            int(vals["h"] if vals["h"] is not None else h_img),
            int(vals["w"] if vals["w"] is not None else w_img),
        )
    h, w = declared if declared else (h_img, w_img)
    if vals["fl_x"] is not None:
        fx = float(vals["fl_x"])
        fy = float(vals["fl_y"]) if vals["fl_y"] is not None else fx
    elif vals["camera_angle_x"] is not None:
        fx = 0.5 * w / np.tan(0.5 * float(vals["camera_angle_x"]))
        fy = 0.5 * h / np.tan(0.5 * float(vals["camera_angle_y"])) if vals["camera_angle_y"] is not None else fx
    else:
        raise DataError(path, field, "no intrinsics: need camera_angle_x or fl_x")
    cx = float(vals["cx"]) if vals["cx"] is not None else w / 2
    cy = float(vals["cy"]) if vals["cy"] is not None else h / 2
    if not all(np.isfinite([fx, fy, cx, cy])) or fx <= 0 or fy <= 0:
        raise DataError(path, field, f"invalid intrinsics fx={fx}, fy={fy}, cx={cx}, cy={cy}")
    return intrinsics_matrix(fx, fy, cx, cy), declared


def load_blender(
    root: str | Path,
    split: str | None = "train",
    downscale: float = 1.0,
) -> Scene:
    """Load a Blender-format scene.

    Args:
        root: folder with ``transforms_{split}.json`` (NeRF-synthetic) or ``transforms.json`` (nerfstudio).
        split: "train", "val" or "test"; ``None`` reads ``transforms.json``.
        downscale: divide the resolution by this factor on load (area filter, premultiplied alpha).
    """
    root = Path(root)
    path = root / ("transforms.json" if split is None else f"transforms_{split}.json")
    if split is not None and not path.exists() and (root / "transforms.json").exists():
        path = root / "transforms.json"
    meta = read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise DataError(path, "frames", "missing or not a list")
    frames = meta["frames"]
    if not frames:
        raise DataError(path, "frames", "empty")

    rgbs, alphas, masks, poses, Ks, sources = [], [], [], [], [], []
    for i, fr in enumerate(frames):
        field = f"frames[{i}]"
        if not isinstance(fr, dict) or "file_path" not in fr:
            raise DataError(path, f"{field}.file_path", "missing")
        if "transform_matrix" not in fr:
            raise DataError(path, f"{field}.transform_matrix", "missing")
        poses.append(_matrix(fr["transform_matrix"], path, f"{field}.transform_matrix"))
        img_path = _resolve_image(path.parent, str(fr["file_path"]))
        arr = load_image(img_path, f"{field}.file_path", source=path)
        K, declared = _intrinsics(meta, fr, arr.shape[:2], path, field)
        if declared is not None and declared != arr.shape[:2]:
            raise DataError(
                path,
                f"{field}.w/h",
                f"image {img_path.name} is {arr.shape[1]}x{arr.shape[0]} "
                f"but intrinsics say {declared[1]}x{declared[0]}",
            )
        Ks.append(K)
        sources.append(str(img_path))
        if arr.shape[2] == 4:
            rgbs.append(arr[..., :3])
            alphas.append(arr[..., 3:])
        else:
            rgbs.append(arr[..., :3] if arr.shape[2] >= 3 else np.repeat(arr, 3, axis=2))
        if "mask_path" in fr:
            masks.append(load_image(path.parent / fr["mask_path"], f"{field}.mask_path", source=path)[..., :1])

    images = stack_images(rgbs, sources, path, "frames")
    h, w = images.shape[-2:]
    if alphas and len(alphas) != len(rgbs):
        raise DataError(path, "frames", "some images have an alpha channel and some do not")
    alpha = stack_images(alphas, sources, path, "frames") if alphas else None
    if masks and len(masks) != len(rgbs):
        raise DataError(path, "frames.mask_path", f"{len(masks)} masks for {len(rgbs)} images")
    mask_t = stack_images(masks, sources, path, "frames.mask_path") if masks else alpha
    if mask_t is not None and mask_t.shape[-2:] != (h, w):
        raise DataError(
            path, "frames.mask_path", f"mask size {tuple(mask_t.shape[-2:])} differs from image size {(h, w)}"
        )

    cams = from_opengl(torch.from_numpy(np.stack(poses)), torch.stack(Ks), h, w)
    validate_cameras(cams, path, "frames")
    cams = Cameras(cams.c2w.float(), cams.K.float(), cams.size)
    scene = Scene(
        images=images,
        cameras=cams,
        masks=mask_t,
        background="alpha" if alpha is not None else "photo",
        frames=sources,
        name=root.name,
        meta={"format": "blender", "split": split, "transforms": str(path)},
    )
    return downscale_scene(scene, downscale)
