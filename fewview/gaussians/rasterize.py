"""``rasterize``: 3D Gaussians + one camera -> image, depth, alpha (differentiable).

Backends: ``"numba"`` (fast CPU path: fused projection + SH and tile compositing, hand-written
backwards), ``"torch"`` (pure-PyTorch reference, any device), ``"gsplat"``
(CUDA, when the package is installed); ``"auto"`` picks gsplat on CUDA tensors when importable, the
numba path on CPU, and the reference otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Cameras
from .project import project
from .tiles import bin_tiles, composite_reference


@dataclass
class GaussianRender:
    rgb: Tensor  # (3, H, W) composited over the background
    depth: Tensor  # (1, H, W) expected camera z, sum_i w_i z_i (not divided by alpha)
    alpha: Tensor  # (1, H, W)
    means2d: Tensor | None  # (M, 2) projected centres of the visible Gaussians (retain_grad for densification)
    ids: Tensor  # (M,) indices of the visible Gaussians
    radii: Tensor  # (M,) screen-space radius in pixels
    width: int
    height: int

    def means2d_grad(self) -> Tensor | None:
        """Gradient of the loss w.r.t. the visible Gaussians' pixel centres (M, 2), after backward."""
        g = None if self.means2d is None else self.means2d.grad
        if g is not None and g.dim() == 3:  # gsplat: (1, N, 2) over all Gaussians
            g = g[0][self.ids]
        return g


def gsplat_available() -> bool:
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        if device.type == "cuda" and gsplat_available():
            return "gsplat"
        return "numba" if device.type == "cpu" else "torch"
    if backend not in ("numba", "torch", "gsplat"):
        raise ValueError(f"unknown rasterizer backend {backend!r}: choose auto, numba, torch or gsplat")
    if backend == "gsplat" and not gsplat_available():
        raise RuntimeError("the gsplat backend needs CUDA and the gsplat package (pip install gsplat)")
    return backend


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    cam: Cameras,
    sh_degree: int | None = None,
    background: Tensor | tuple | None = None,
    backend: str = "auto",
    tile: int = 16,
    eps2d: float = 0.3,
    near: float = 0.01,
) -> GaussianRender:
    """Render Gaussians (means (N,3); quats (N,4) w,x,y,z; scales (N,3) in world units; opacities (N,)
    in [0,1]; colours (N,3) RGB, or SH coefficients (N,K,3) with ``sh_degree`` 0..3) from one camera.
    """
    dev = means.device
    bg = (
        torch.zeros(3, dtype=means.dtype, device=dev)
        if background is None
        else torch.as_tensor(background, dtype=means.dtype, device=dev)
    )
    backend = resolve_backend(backend, dev)
    if backend == "gsplat":
        return _rasterize_gsplat(means, quats, scales, opacities, colors, cam, sh_degree, bg, tile, eps2d, near)
    if backend == "numba" and sh_degree is not None:
        from .project_numba import project_fused

        proj = project_fused(means, quats, scales, opacities, colors, cam, sh_degree, near, eps2d)
    else:
        proj = project(means, quats, scales, opacities, colors, cam, sh_degree, near, eps2d)
    if backend == "numba":
        from .raster_numba import bin_tiles_numba

        bins = bin_tiles_numba(proj, tile)
    else:
        bins = bin_tiles(proj, tile)
    feats = torch.cat([proj.colors, proj.depths[:, None]], 1)
    bg4 = torch.cat([bg, bg.new_zeros(1)])
    if backend == "numba":
        from .raster_numba import composite_numba

        out, alpha = composite_numba(
            proj.means2d, proj.conics, feats, proj.opacities, proj.extents, bg4, bins, proj.height, proj.width
        )
    else:
        out, alpha = composite_reference(
            proj.means2d, proj.conics, feats, proj.opacities, bg4, bins, proj.height, proj.width
        )
    out = out.permute(2, 0, 1)
    return GaussianRender(out[:3], out[3:], alpha[None], proj.means2d, proj.ids, proj.radii, proj.width, proj.height)


def _rasterize_gsplat(means, quats, scales, opacities, colors, cam, sh_degree, bg, tile, eps2d, near):
    from gsplat import rasterization

    h, w = int(cam.size[0, 0]), int(cam.size[0, 1])
    viewmat = torch.linalg.inv(cam.c2w[0].to(means.device, torch.float32))[None]
    K = cam.K[0].to(means.device, torch.float32)[None]
    # gsplat evaluates pixel (x, y) at (x + 0.5, y + 0.5), the same convention as fewview's intrinsics.
    img, alpha, meta = rasterization(
        means, quats, scales, opacities, colors, viewmat, K, w, h,
        near_plane=near, eps2d=eps2d, sh_degree=sh_degree, packed=False, tile_size=tile,
        backgrounds=bg[None].float(), render_mode="RGB+ED",
    )  # fmt: skip  # backgrounds (C, 3): gsplat appends the depth channel's zero itself
    radii = meta["radii"][0]
    if radii.dim() == 2:
        radii = radii.amax(-1)
    vis = radii > 0
    ids = vis.nonzero().squeeze(1)
    out = img[0].permute(2, 0, 1)
    # gsplat's "ED" channel is normalised by alpha; fewview's depth is the un-normalised sum.
    depth = out[3:] * alpha[0].permute(2, 0, 1)
    means2d = meta["means2d"]  # (1, N, 2): see GaussianRender.means2d_grad
    return GaussianRender(out[:3], depth, alpha[0].permute(2, 0, 1), means2d, ids, radii[ids].float(), w, h)
