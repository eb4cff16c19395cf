"""Dataset readers (one file per format), the shared :class:`Scene` structure and view protocols."""

from __future__ import annotations

from pathlib import Path

from .blender import load_blender
from .co3d import BoxCrop, list_sequences, load_co3d_sequence
from .colmap import load_colmap, read_colmap_model, write_colmap_model
from .dtu import load_dtu
from .llff import load_llff
from .protocols import PROTOCOLS, ViewSplit, get_protocol
from .scene import DataError, Scene


def detect_format(path: str | Path) -> str:
    """Guess a scene folder's format from the files it holds."""
    p = Path(path)
    if not p.exists():
        raise DataError(p, "", "path not found")
    if any((p / f"transforms_{s}.json").exists() for s in ("train", "val", "test")) or (p / "transforms.json").exists():
        return "blender"
    if (p / "poses_bounds.npy").exists():
        return "llff"
    if (p / "cameras.npz").exists() or (p / "cameras_sphere.npz").exists():
        return "dtu"
    if (p / "sparse" / "0").is_dir():
        return "colmap"
    raise DataError(
        p, "", "unknown scene format (expected transforms*.json, poses_bounds.npy, cameras.npz or sparse/0)"
    )


def load_scene(path: str | Path, split: str | None = "train", downscale: float = 1.0) -> Scene:
    """Load any supported scene folder (Blender, LLFF, DTU/IDR, COLMAP); ``split`` applies to Blender."""
    fmt = detect_format(path)
    if fmt == "blender":
        return load_blender(path, split=split, downscale=downscale)
    return {"llff": load_llff, "dtu": load_dtu, "colmap": load_colmap}[fmt](path, downscale=downscale)


__all__ = [
    "PROTOCOLS",
    "BoxCrop",
    "DataError",
    "Scene",
    "ViewSplit",
    "detect_format",
    "get_protocol",
    "list_sequences",
    "load_blender",
    "load_co3d_sequence",
    "load_colmap",
    "load_dtu",
    "load_llff",
    "load_scene",
    "read_colmap_model",
    "write_colmap_model",
]
