"""Trilinear interpolation of feature tables: a fast gather path and a grid_sample reference.

The fast path computes the 8 corner rows and weights, gathers and sums rows of a (V, C) table with
``F.embedding_bag`` and scatters gradients back with ``index_add_`` (a custom backward). On this CPU it is several times
faster than 3-D ``F.grid_sample``, mostly in the backward. Both paths agree (tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def corner_weights(u: Tensor, res: int) -> tuple[Tensor, Tensor]:
    """Row indices (N, 8) into a (res^3, C) vertex table stored x-major (index = (x * res + y) * res + z)
    and trilinear weights (N, 8) for points ``u`` in [0, 1]^3 (vertex 0 at u=0, vertex res-1 at u=1)."""
    p = u.clamp(0, 1) * (res - 1)
    p0 = p.floor().clamp(max=res - 2)
    f = p - p0
    p0 = p0.long()
    base = (p0[:, 0] * res + p0[:, 1]) * res + p0[:, 2]
    r2 = res * res
    offsets = torch.tensor([0, 1, res, res + 1, r2, r2 + 1, r2 + res, r2 + res + 1], device=u.device)
    fx, fy, fz = f.unbind(-1)
    wx, wy, wz = torch.stack([1 - fx, fx], -1), torch.stack([1 - fy, fy], -1), torch.stack([1 - fz, fz], -1)
    w = (wx[:, :, None, None] * wy[:, None, :, None] * wz[:, None, None, :]).reshape(-1, 8)
    return base[:, None] + offsets, w


class _GatherInterp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(idx, w)
        ctx.table_shape = table.shape
        return F.embedding_bag(idx, table, per_sample_weights=w, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        idx, w = ctx.saved_tensors
        grad_table = None
        if ctx.needs_input_grad[0]:
            grad_table = torch.zeros(ctx.table_shape, dtype=grad_out.dtype, device=grad_out.device)
            contrib = (w[:, :, None] * grad_out[:, None, :]).reshape(-1, grad_out.shape[-1])
            grad_table.index_add_(0, idx.reshape(-1), contrib)
        return grad_table, None, None


def gather_interp(table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
    """(N, C) = sum_k w[n, k] * table[idx[n, k]] with a scatter-add backward for ``table`` (not for w)."""
    return _GatherInterp.apply(table, idx, w)


def trilinear(table: Tensor, res: int, u: Tensor) -> Tensor:
    """Fast trilinear lookup of a (res^3, C) vertex table at points ``u`` (N, 3) in [0, 1]^3."""
    idx, w = corner_weights(u, res)
    return gather_interp(table, idx, w.to(table.dtype))


def trilinear_reference(table: Tensor, res: int, u: Tensor) -> Tensor:
    """The same lookup through ``F.grid_sample`` (align_corners=True), the reference for tests."""
    c = table.shape[1]
    vol = table.reshape(res, res, res, c).permute(3, 2, 1, 0)[None]  # (1, C, D=z, H=y, W=x)
    grid = (u.clamp(0, 1) * 2 - 1).reshape(1, -1, 1, 1, 3)
    out = F.grid_sample(vol, grid.to(table.dtype), mode="bilinear", align_corners=True)
    return out.reshape(c, -1).T
