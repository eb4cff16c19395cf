"""Occupancy grid for empty-space skipping (Instant-NGP style) and the ray marcher that uses it."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras
from .volume import RenderOutput, composite_packed, ray_aabb, weights_packed


def _rand(shape, generator, device, dtype=torch.float32) -> Tensor:
    """Uniform samples drawn on the generator's device (a CPU generator can drive a CUDA fit)."""
    gdev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gdev, dtype=dtype).to(device)


class OccupancyGrid:
    """A res^3 boolean grid over ``aabb``: cells that may contain density.

    It starts fully occupied; :meth:`carve_with_masks` removes cells outside a visual hull and
    :meth:`update` keeps an exponential moving maximum of density per cell (Instant-NGP) and marks
    cells whose density would give an alpha above ``alpha_threshold`` over one render step.
    """

    def __init__(self, aabb: Tensor, resolution: int = 128, device=None):
        self.aabb = torch.as_tensor(aabb, dtype=torch.float32, device=device).reshape(2, 3)
        self.res = resolution
        self.occupied = torch.ones((resolution,) * 3, dtype=torch.bool, device=device)
        self.density_ema = torch.full((resolution,) * 3, -1.0, device=device)

    # ------------------------------------------------------------- queries
    def cell_index(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u = (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((u >= 0) & (u <= 1)).all(-1)
        ijk = (u * self.res).long().clamp(0, self.res - 1)
        return ijk, inside

    def query(self, x: Tensor) -> Tensor:
        """(N,) bool: whether each point lies in an occupied cell (False outside the box)."""
        ijk, inside = self.cell_index(x)
        return self.occupied[ijk[..., 0], ijk[..., 1], ijk[..., 2]] & inside

    def cell_centers(self, jitter: bool = False, generator=None) -> Tensor:
        r = torch.arange(self.res, device=self.aabb.device, dtype=torch.float32)
        g = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
        off = _rand(g.shape, generator, g.device) if jitter else 0.5
        return self.aabb[0] + (g + off) / self.res * (self.aabb[1] - self.aabb[0])

    def to(self, device) -> OccupancyGrid:
        """Move the grid's tensors to ``device`` (in place; returns self)."""
        self.aabb, self.occupied, self.density_ema = (
            self.aabb.to(device),
            self.occupied.to(device),
            self.density_ema.to(device),
        )
        return self

    @property
    def fraction(self) -> float:
        return float(self.occupied.float().mean())

    # ------------------------------------------------------------- updates
    @torch.no_grad()
    def carve_with_masks(self, cams: Cameras, masks: Tensor, dilate_px: int = 2, threshold: float = 0.5) -> None:
        """Keep cells whose centre projects inside the (dilated) mask of every view that sees it."""
        centers = self.cell_centers()
        m = (masks > threshold).float()
        if dilate_px > 0:
            m = F.max_pool2d(m, 2 * dilate_px + 1, stride=1, padding=dilate_px)
        h, w = masks.shape[-2:]
        alive = self.occupied.reshape(-1).nonzero()[:, 0]  # only cells still alive are projected
        for i in range(len(cams)):
            uv, z = cams[i].project(centers[alive].to(cams.c2w.dtype))
            x, y = uv[0, :, 0].floor().long(), uv[0, :, 1].floor().long()
            in_view = (z[0] > 0) & (x >= 0) & (x < w) & (y >= 0) & (y < h)
            inside = torch.zeros_like(in_view)
            inside[in_view] = m[i, 0, y[in_view], x[in_view]] > 0.5
            alive = alive[inside | ~in_view]
        keep = torch.zeros(self.occupied.numel(), dtype=torch.bool, device=centers.device)
        keep[alive] = True
        self.occupied &= keep.reshape(self.occupied.shape)

    @torch.no_grad()
    def update(
        self,
        density_fn: Callable[[Tensor], Tensor],
        step: float,
        alpha_threshold: float = 1e-4,
        decay: float = 0.95,
        chunk: int = 1 << 18,
        generator=None,
    ) -> None:
        """Re-estimate occupancy from ``density_fn`` at one jittered point per cell, then dilate by one
        cell so thin surfaces between samples are not lost."""
        pts = self.cell_centers(jitter=True, generator=generator)
        dens = torch.cat([density_fn(pts[i : i + chunk]) for i in range(0, len(pts), chunk)])
        dens = dens.reshape(self.density_ema.shape)
        self.density_ema = torch.maximum(self.density_ema * decay, dens)
        sigma_thr = -torch.log(torch.tensor(1 - alpha_threshold)) / step
        occ = (self.density_ema > float(sigma_thr)).float()[None, None]
        self.occupied = F.max_pool3d(occ, 3, stride=1, padding=1)[0, 0] > 0

    def state_dict(self) -> dict[str, Tensor]:
        return {"occupied": self.occupied.to(torch.uint8), "density_ema": self.density_ema, "aabb": self.aabb}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.occupied = state["occupied"].bool()
        self.density_ema = state["density_ema"].float()
        self.res = self.occupied.shape[0]
        self.aabb = state["aabb"].float()


def march_rays(
    field,
    origins: Tensor,
    directions: Tensor,
    aabb: Tensor,
    step: float,
    occupancy: OccupancyGrid | None = None,
    background: Tensor | float | None = None,
    perturb: bool = False,
    weight_threshold: float = 1e-4,
    generator=None,
) -> RenderOutput:
    """Render rays by uniform steps of ``step`` through ``aabb``.

    Samples are generated packed (only inside the box), density is evaluated only in occupied cells,
    and colour only where a sample's weight exceeds ``weight_threshold`` -- which also terminates rays
    early: once transmittance falls below the threshold no later sample is coloured. Without an
    occupancy grid this is plain uniform sampling, the reference it must agree with.
    """
    n = origins.shape[0]
    dev, dt = origins.device, origins.dtype
    t_near, t_far, hit = ray_aabb(origins, directions, aabb)
    jitter = _rand((n,), generator, dev, dt) if perturb else torch.full((n,), 0.5, device=dev, dtype=dt)
    counts = torch.where(
        hit, ((t_far - t_near) / step - jitter).floor().long() + 1, torch.zeros_like(t_near, dtype=torch.long)
    )
    counts = counts.clamp_min(0)
    ray_idx = torch.repeat_interleave(torch.arange(n, device=dev), counts)
    local = torch.arange(len(ray_idx), device=dev) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    t = t_near[ray_idx] + (local.to(dt) + jitter[ray_idx]) * step
    pts = origins[ray_idx] + t[:, None] * directions[ray_idx]
    if occupancy is not None:
        keep = occupancy.query(pts)
        ray_idx, t, pts = ray_idx[keep], t[keep], pts[keep]
    deltas = torch.full_like(t, step)
    sigma, aux = field.density(pts)
    sigma = sigma.to(dt)
    with torch.no_grad():
        need = weights_packed(sigma, deltas, ray_idx, n) > weight_threshold
    rgb = torch.zeros(len(t), 3, device=dev, dtype=dt)
    if bool(need.any()):
        col = field.color(aux[need], directions[ray_idx[need]])
        rgb = rgb.index_put((need.nonzero()[:, 0],), col.to(dt))
    return composite_packed(sigma, rgb, t, deltas, ray_idx, n, background)
