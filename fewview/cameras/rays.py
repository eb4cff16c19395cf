"""Ray generation through pixel centres."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import Cameras


@dataclass
class Rays:
    """A bundle of rays (any leading shape).

    Attributes:
        origins: (..., 3) world-space origins (the camera centre).
        directions: (..., 3) unit world-space directions.
        z_per_t: (...,) camera-frame z travelled per unit distance along the ray
            (multiply a ray distance by it to get the z-depth).
    """

    origins: Tensor
    directions: Tensor
    z_per_t: Tensor

    def __getitem__(self, idx) -> Rays:
        return Rays(self.origins[idx], self.directions[idx], self.z_per_t[idx])

    def reshape(self, *shape: int) -> Rays:
        return Rays(self.origins.reshape(*shape, 3), self.directions.reshape(*shape, 3), self.z_per_t.reshape(shape))

    def to(self, *args, **kwargs) -> Rays:
        return Rays(
            self.origins.to(*args, **kwargs), self.directions.to(*args, **kwargs), self.z_per_t.to(*args, **kwargs)
        )

    def __len__(self) -> int:
        return self.origins.shape[0]


def pixel_centers(height: int, width: int, device=None, dtype=torch.float32) -> Tensor:
    """(H, W, 2) continuous (x, y) coordinates of pixel centres (j + 0.5, i + 0.5)."""
    ys = torch.arange(height, device=device, dtype=dtype) + 0.5
    xs = torch.arange(width, device=device, dtype=dtype) + 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def rays_from_pixels(cams: Cameras, uv: Tensor) -> Rays:
    """Rays through (B, P, 2) continuous pixel coordinates of each camera."""
    dtype = uv.dtype
    K = cams.K.to(dtype)
    x = (uv[..., 0] - K[:, None, 0, 2]) / K[:, None, 0, 0]
    y = (uv[..., 1] - K[:, None, 1, 2]) / K[:, None, 1, 1]
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    norm = d_cam.norm(dim=-1, keepdim=True)
    d_cam = d_cam / norm
    R = cams.c2w[:, :3, :3].to(dtype)
    dirs = d_cam @ R.transpose(1, 2)
    origins = cams.c2w[:, None, :3, 3].to(dtype).expand_as(dirs)
    return Rays(origins, dirs, 1.0 / norm[..., 0])


def camera_rays(cams: Cameras, dtype=torch.float32) -> Rays:
    """Rays through every pixel centre: fields of shape (B, H, W, ...). All cameras must share a size."""
    h, w = cams.height, cams.width
    uv = pixel_centers(h, w, device=cams.c2w.device, dtype=dtype).reshape(1, -1, 2).expand(len(cams), -1, -1)
    return rays_from_pixels(cams, uv).reshape(len(cams), h, w)
