"""Chunked full-image rendering."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..cameras import Cameras, camera_rays
from .volume import RenderOutput


@torch.no_grad()
def render_image(
    render_rays: Callable[[Tensor, Tensor], RenderOutput], cam: Cameras, chunk: int = 16384, device=None
) -> dict[str, Tensor]:
    """Render one camera's full image with ``render_rays(origins, directions)`` in chunks of rays.

    Rays are sent to ``device`` (default: the camera's). Returns ``rgb`` (3, H, W); ``depth`` (1, H, W), the z-depth
    of the expected ray termination divided by opacity (0 where nothing was hit); ``opacity`` (1, H, W).
    """
    rays = camera_rays(cam[:1], dtype=torch.float32)
    h, w = rays.origins.shape[1:3]
    o, d, zt = rays.origins.reshape(-1, 3), rays.directions.reshape(-1, 3), rays.z_per_t.reshape(-1)
    dev = cam.c2w.device if device is None else device
    rgb, depth, acc = [], [], []
    for i in range(0, len(o), chunk):
        out = render_rays(o[i : i + chunk].to(dev), d[i : i + chunk].to(dev))
        rgb.append(out.rgb.cpu())
        depth.append(out.depth.cpu() * zt[i : i + chunk])
        acc.append(out.opacity.cpu())
    rgb_t, depth_t, acc_t = torch.cat(rgb), torch.cat(depth), torch.cat(acc)
    depth_t = torch.where(acc_t > 1e-3, depth_t / acc_t.clamp_min(1e-3), torch.zeros_like(depth_t))
    return {
        "rgb": rgb_t.reshape(h, w, 3).permute(2, 0, 1).clamp(0, 1),
        "depth": depth_t.reshape(1, h, w),
        "opacity": acc_t.reshape(1, h, w),
    }
