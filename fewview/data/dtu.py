"""DTU in the IDR / NeuS layout: ``cameras.npz`` (``world_mat_i``, ``scale_mat_i``), ``image/``, ``mask/``.

``P = world_mat_i @ scale_mat_i`` projects points of the *normalised* scene (object inside the
unit sphere), so the cameras returned here live in that normalised frame. K, R and the centre
come from an RQ decomposition of P; DTU/OpenCV intrinsics put pixel centres at integers, which
fewview shifts by +0.5.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..cameras import CameraError, Cameras
from ..cameras.convert import from_dtu
from .io import downscale_scene, load_image, stack_images
from .llff import list_images
from .scene import DataError, Scene, validate_cameras


def load_dtu(
    root: str | Path,
    cameras_file: str | None = None,
    image_dir: str = "image",
    mask_dir: str = "mask",
    downscale: float = 1.0,
) -> Scene:
    """Load an IDR/NeuS-format DTU scan.

    Args:
        root: scan folder (e.g. ``scan65``).
        cameras_file: ``cameras.npz`` by default, else ``cameras_sphere.npz`` when that is what exists.
        image_dir, mask_dir: subfolders; masks are optional.
        downscale: divide the resolution by this factor on load.
    """
    root = Path(root)
    if cameras_file is None:
        cameras_file = (
            "cameras.npz"
            if (root / "cameras.npz").exists() or not (root / "cameras_sphere.npz").exists()
            else "cameras_sphere.npz"
        )
    cpath = root / cameras_file
    if not cpath.is_file():
        raise DataError(cpath, "", "file not found")
    try:
        npz = dict(np.load(cpath, allow_pickle=False))
    except (ValueError, OSError) as e:
        raise DataError(cpath, "", f"cannot read: {e}") from None
    ids = sorted(int(m.group(1)) for k in npz if (m := re.fullmatch(r"world_mat_(\d+)", k)))
    if not ids:
        raise DataError(cpath, "world_mat_*", "no world_mat_<i> entries")
    if ids != list(range(len(ids))):
        raise DataError(cpath, "world_mat_*", f"indices are not 0..{len(ids) - 1}")
    paths = list_images(root / image_dir) if (root / image_dir).is_dir() else []
    if len(paths) != len(ids):
        raise DataError(cpath, "world_mat_*", f"{len(ids)} cameras but {len(paths)} images in {root / image_dir}")

    wms, sms = [], []
    for i in ids:
        wm = np.asarray(npz[f"world_mat_{i}"], dtype=np.float64)
        sm = np.asarray(npz.get(f"scale_mat_{i}", np.eye(4)), dtype=np.float64)
        for name, m in ((f"world_mat_{i}", wm), (f"scale_mat_{i}", sm)):
            if m.shape not in ((4, 4), (3, 4)):
                raise DataError(cpath, name, f"expected a 4x4 matrix, got shape {m.shape}")
            if not np.isfinite(m).all():
                raise DataError(cpath, name, "contains NaN or Inf")
        if wm.shape == (3, 4):
            wm = np.vstack([wm, [0, 0, 0, 1]])
        wms.append(wm)
        sms.append(sm)

    arrs = [load_image(p, "image", source=p)[..., :3] for p in paths]
    images = stack_images(arrs, paths, root / image_dir, "images")
    h, w = images.shape[-2:]
    try:
        cams = from_dtu(np.stack(wms), np.stack(sms), h, w)
    except CameraError as e:
        raise DataError(cpath, "world_mat", str(e)) from None
    validate_cameras(cams, cpath, "world_mat")
    cams = Cameras(cams.c2w.float(), cams.K.float(), cams.size)

    masks = None
    if (root / mask_dir).is_dir():
        mpaths = list_images(root / mask_dir)
        if len(mpaths) != len(paths):
            raise DataError(root / mask_dir, "masks", f"{len(mpaths)} masks for {len(paths)} images")
        masks = stack_images(
            [load_image(p, "mask", source=p)[..., :1] for p in mpaths], mpaths, root / mask_dir, "masks"
        )
        if masks.shape[-2:] != (h, w):
            raise DataError(
                root / mask_dir, "masks", f"mask size {tuple(masks.shape[-2:])} differs from image size {(h, w)}"
            )

    # Objects lie inside the unit sphere of the normalised frame.
    dist = cams.centers.norm(dim=-1)
    near_far = torch.stack([(dist - 1).clamp_min(0.05), dist + 1], dim=-1)
    scene = Scene(
        images=images,
        cameras=cams,
        masks=masks,
        near_far=near_far,
        bounds=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]),
        background="photo",
        frames=[str(p) for p in paths],
        name=root.name,
        meta={"format": "dtu", "cameras": str(cpath), "scale_mat_0": sms[0].tolist()},
    )
    return downscale_scene(scene, downscale)
