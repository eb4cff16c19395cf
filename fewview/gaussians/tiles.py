"""Tile binning and the pure-PyTorch reference compositor for projected 2-D Gaussians."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .project import ALPHA_MAX, ALPHA_MIN, T_MIN, Projected


@dataclass
class TileBins:
    """Gaussian-tile intersections sorted by tile, then by depth (front to back)."""

    offsets: Tensor  # (n_tiles + 1,) start of each tile's run in ``gauss``
    gauss: Tensor  # (I,) index into the projected Gaussians
    tile: int
    tiles_x: int
    tiles_y: int


@torch.no_grad()
def bin_tiles(proj: Projected, tile: int = 16) -> TileBins:
    """Each Gaussian goes to every tile its alpha >= 1/255 bounding box touches."""
    h, w = proj.height, proj.width
    tx_n, ty_n = (w + tile - 1) // tile, (h + tile - 1) // tile
    m = proj.means2d.detach()
    ext = proj.extents
    x0 = ((m[:, 0] - ext[:, 0]) / tile).floor().clamp(0, tx_n).long()
    x1 = ((m[:, 0] + ext[:, 0]) / tile).floor().add(1).clamp(0, tx_n).long()
    y0 = ((m[:, 1] - ext[:, 1]) / tile).floor().clamp(0, ty_n).long()
    y1 = ((m[:, 1] + ext[:, 1]) / tile).floor().add(1).clamp(0, ty_n).long()
    nx, ny = (x1 - x0).clamp_min(0), (y1 - y0).clamp_min(0)
    counts = nx * ny
    n = len(counts)
    dev = m.device
    gid = torch.repeat_interleave(torch.arange(n, device=dev), counts)
    start = torch.cumsum(counts, 0) - counts
    k = torch.arange(len(gid), device=dev) - start[gid]
    tile_id = (y0[gid] + k // nx[gid].clamp_min(1)) * tx_n + x0[gid] + k % nx[gid].clamp_min(1)
    depth_rank = torch.empty(n, dtype=torch.long, device=dev)
    depth_rank[torch.argsort(proj.depths.detach(), stable=True)] = torch.arange(n, device=dev)
    order = torch.argsort(tile_id * max(n, 1) + depth_rank[gid])
    per_tile = torch.bincount(tile_id, minlength=tx_n * ty_n)
    offsets = torch.zeros(tx_n * ty_n + 1, dtype=torch.long, device=dev)
    offsets[1:] = torch.cumsum(per_tile, 0)
    return TileBins(offsets, gid[order], tile, tx_n, ty_n)


def composite_reference(
    means2d: Tensor, conics: Tensor, features: Tensor, opacities: Tensor, background: Tensor,
    bins: TileBins, height: int, width: int,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Front-to-back alpha compositing, tile by tile, in differentiable PyTorch ops.

    Returns features (H, W, C) composited over ``background`` (C,) and alpha (H, W). The same rules as
    the fast path: alpha = min(0.99, o exp(power)), skipped below 1/255 or where power > 0; a pixel stops
    before the Gaussian that would take its transmittance below 1e-4.
    """
    C = features.shape[1]
    dt, dev = means2d.dtype, means2d.device
    out_f = torch.zeros(height, width, C, dtype=dt, device=dev) + background
    out_a = torch.zeros(height, width, dtype=dt, device=dev)
    ts = bins.tile
    rows, cols = [], []
    vals_f, vals_a = [], []
    for t in range(bins.tiles_x * bins.tiles_y):
        s, e = int(bins.offsets[t]), int(bins.offsets[t + 1])
        if s == e:
            continue
        ty, tx = divmod(t, bins.tiles_x)
        ys = torch.arange(ty * ts, min((ty + 1) * ts, height), device=dev)
        xs = torch.arange(tx * ts, min((tx + 1) * ts, width), device=dev)
        py, px = torch.meshgrid(ys, xs, indexing="ij")
        py, px = py.reshape(-1), px.reshape(-1)
        g = bins.gauss[s:e]
        dx = (px.to(dt) + 0.5)[:, None] - means2d[g, 0][None]
        dy = (py.to(dt) + 0.5)[:, None] - means2d[g, 1][None]
        a, b, c = conics[g].unbind(-1)
        power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
        alpha = (opacities[g] * torch.exp(power)).clamp(max=ALPHA_MAX)
        alpha = torch.where((power <= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
        one_minus = 1 - alpha
        t_incl = torch.cumprod(one_minus, 1)
        included = t_incl >= T_MIN
        t_excl = torch.cat([torch.ones_like(t_incl[:, :1]), t_incl[:, :-1]], 1)
        wgt = alpha * t_excl * included
        t_final = torch.where(included, one_minus, torch.ones_like(one_minus)).prod(1)
        vals_f.append(wgt @ features[g] + t_final[:, None] * background)
        vals_a.append(1 - t_final)
        rows.append(py)
        cols.append(px)
    if rows:
        py, px = torch.cat(rows), torch.cat(cols)
        out_f = out_f.index_put((py, px), torch.cat(vals_f))
        out_a = out_a.index_put((py, px), torch.cat(vals_a))
    return out_f, out_a
