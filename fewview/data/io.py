"""Image and JSON loading shared by the readers (errors name the file)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .scene import DataError, Scene


def read_json(path: str | Path, field: str = "") -> object:
    """Parse a JSON file (``.jgz``/``.gz`` are gunzipped); malformed input raises :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, field, "file not found")
    try:
        raw = path.read_bytes()
        if path.suffix in (".jgz", ".gz"):
            raw = gzip.decompress(raw)
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(path, field, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(path, field, f"cannot read: {e}") from None


def load_image(path: str | Path, field: str = "", source: str | Path | None = None) -> np.ndarray:
    """Load an image as float32 (H, W, C) in [0, 1] (C = 1, 3 or 4; 16-bit PNGs keep their precision).

    ``source`` is the file that referenced ``path`` (used in error messages).
    """
    path = Path(path)
    where = source if source is not None else path
    if not path.is_file():
        raise DataError(where, field, f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
            else:
                if im.mode not in ("L", "RGB", "RGBA"):
                    im = im.convert("RGBA" if "A" in im.mode else "RGB")
                arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(where, field, f"cannot decode image {path}: {e}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def load_mask(path: str | Path, field: str = "", source: str | Path | None = None) -> np.ndarray:
    """A mask image as float32 (H, W) in [0, 1]: the alpha of an RGBA file, else its first channel."""
    m = load_image(path, field, source)
    return m[..., 3] if m.shape[-1] == 4 else m[..., 0]


def to_chw(arr: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


def area_resize(x: Tensor, height: int, width: int, alpha: Tensor | None = None) -> Tensor:
    """Area (box-filter) resize of (N, C, H, W); with ``alpha`` given the colour is averaged premultiplied."""
    if x.shape[-2:] == (height, width):
        return x
    if alpha is None:
        return F.interpolate(x, size=(height, width), mode="area")
    a = F.interpolate(alpha, size=(height, width), mode="area")
    rgb = F.interpolate(x * alpha, size=(height, width), mode="area")
    return torch.where(a > 0, rgb / a.clamp_min(1e-8), torch.zeros_like(rgb))


def downscaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """Size after dividing by ``factor`` (rounded to the nearest pixel)."""
    if factor <= 0:
        raise ValueError(f"downscale must be positive, got {factor}")
    return max(1, int(round(height / factor))), max(1, int(round(width / factor)))


def stack_images(arrs: list[np.ndarray], paths: list, source, field: str) -> Tensor:
    """Stack same-sized (H, W, C) arrays into (N, C, H, W); a size mismatch raises :class:`DataError`."""
    h, w = arrs[0].shape[:2]
    for i, a in enumerate(arrs):
        if a.shape[:2] != (h, w):
            raise DataError(source, f"{field}[{i}]", f"image {paths[i]} is {a.shape[1]}x{a.shape[0]}, expected {w}x{h}")
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def downscale_scene(scene: Scene, factor: float) -> Scene:
    """The scene with its resolution divided by ``factor``: area-filtered images (premultiplied by alpha
    for RGBA sources) and masks, nearest-neighbour depths and valid regions, rescaled intrinsics."""
    if factor == 1:
        return scene
    h, w = downscaled_size(scene.height, scene.width, factor)
    alpha = scene.masks if scene.background == "alpha" else None

    def nearest(t):
        return None if t is None else F.interpolate(t, size=(h, w), mode="nearest")

    return Scene(
        images=area_resize(scene.images, h, w, alpha=alpha),
        cameras=scene.cameras.resize(h, w),
        masks=None if scene.masks is None else area_resize(scene.masks, h, w),
        depths=nearest(scene.depths),
        near_far=scene.near_far,
        bounds=scene.bounds,
        valid=nearest(scene.valid),
        background=scene.background,
        frames=scene.frames,
        name=scene.name,
        meta={**scene.meta, "downscale": factor},
    )
