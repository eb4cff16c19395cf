"""LLFF: ``poses_bounds.npy`` + ``images/`` (+ optional ``masks/``).

Row i of ``poses_bounds.npy`` belongs to the i-th image in sorted filename order. Its 3x5 block
holds the camera's [down, right, back] axes, centre and (H, W, focal); then near and far depth.
Images stored at a uniformly reduced size (e.g. ``images_4``) get their intrinsics rescaled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras
from ..cameras.convert import from_llff
from .io import downscale_scene, load_image, stack_images
from .scene import DataError, Scene, validate_cameras

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES and not p.name.startswith("."))


def _find_mask(mask_dir: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}_mask"):
        for suf in IMAGE_SUFFIXES:
            if (mask_dir / f"{name}{suf}").is_file():
                return mask_dir / f"{name}{suf}"
    return None


def load_llff(
    root: str | Path, image_dir: str = "images", mask_dir: str | None = "masks", downscale: float = 1.0
) -> Scene:
    """Load an LLFF scene.

    Args:
        root: folder with ``poses_bounds.npy``.
        image_dir: subfolder of images (``images``, ``images_4``, ...).
        mask_dir: subfolder of masks matched by file stem (``<stem>.png`` or ``<stem>_mask.png``);
            used when it exists, and then every image needs one.
        downscale: divide the resolution by this factor on load.
    """
    root = Path(root)
    pb_path = root / "poses_bounds.npy"
    if not pb_path.is_file():
        raise DataError(pb_path, "", "file not found")
    try:
        pb = np.load(pb_path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(pb_path, "", f"cannot read: {e}") from None
    if pb.ndim != 2 or pb.shape[1] != 17:
        raise DataError(pb_path, "shape", f"expected (N, 17), got {pb.shape}")
    bad = ~np.isfinite(pb).all(axis=1)
    if bad.any():
        raise DataError(pb_path, f"row {int(np.flatnonzero(bad)[0])}", "contains NaN or Inf")

    img_folder = root / image_dir
    if not img_folder.is_dir():
        raise DataError(img_folder, "", "image folder not found")
    paths = list_images(img_folder)
    if len(paths) != len(pb):
        raise DataError(pb_path, "rows", f"{len(pb)} poses but {len(paths)} images in {img_folder}")

    cams, near_far = from_llff(pb)
    validate_cameras(cams, pb_path, "rows")
    arrs = [load_image(p, "image", source=p)[..., :3] for p in paths]
    images = stack_images(arrs, paths, img_folder, "images")
    h, w = images.shape[-2:]
    h0, w0 = int(cams.size[0, 0]), int(cams.size[0, 1])
    sy, sx = h / h0, w / w0
    if abs(sy - sx) * max(h0, w0) > 1.0 or (cams.size != cams.size[0]).any():
        raise DataError(pb_path, "row 0 hwf", f"images are {w}x{h} but the poses say {w0}x{h0} (not a uniform rescale)")
    cams = Cameras(cams.c2w.float(), cams.K.float(), cams.size).resize(h, w)

    masks = None
    mdir = root / mask_dir if mask_dir else None
    if mdir is not None and mdir.is_dir():
        mask_paths = [_find_mask(mdir, p.stem) for p in paths]
        n_found = sum(m is not None for m in mask_paths)
        n_files = len(list_images(mdir))
        if n_found != len(paths) or n_files != len(paths):
            raise DataError(
                mdir, "masks", f"{n_files} mask files ({n_found} matching image names) for {len(paths)} images"
            )
        marr = [load_image(m, "mask", source=m)[..., :1] for m in mask_paths]
        masks = stack_images(marr, mask_paths, mdir, "masks")
        if masks.shape[-2:] != (h, w):
            raise DataError(
                mdir, "masks", f"mask size {tuple(masks.shape[-2:])[::-1]} differs from image size {(w, h)}"
            )

    scene = Scene(
        images=images,
        cameras=cams,
        masks=masks,
        near_far=near_far.float(),
        background="photo",
        frames=[str(p) for p in paths],
        name=root.name,
        meta={"format": "llff", "poses_bounds": str(pb_path)},
    )
    return downscale_scene(scene, downscale)


def write_llff_poses(path: str | Path, cams: Cameras, near_far) -> None:
    """Write ``poses_bounds.npy`` for cameras in fewview's convention."""
    from ..cameras.convert import to_llff

    np.save(path, to_llff(cams, torch.as_tensor(near_far)).numpy())
