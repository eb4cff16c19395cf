"""Fast CPU compositing of projected 2-D Gaussians: numba kernels, parallel over 16x16 tiles.

Forward and a hand-written backward follow the compositing rules of :func:`tiles.composite_reference`
exactly. The backward walks each pixel's Gaussians back to front, recovering transmittance by division,
and writes per-intersection gradients into the tile's own slice (no write races); they are summed per
Gaussian afterwards with ``index_add_``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from .project import ALPHA_MAX, ALPHA_MIN, T_MIN
from .tiles import TileBins

FASTMATH = True
BOX_MARGIN = 1e-3  # pixels: the box test only skips work, every pixel inside it is tested exactly


@njit(inline="always")
def _bbox(mx, my, ex, ey, x0, x1, y0, y1):
    """Pixels of the tile [x0, x1) x [y0, y1) whose centres lie inside the Gaussian's alpha >= 1/255 box."""
    return (
        max(x0, int(math.ceil(mx - ex - 0.5 - BOX_MARGIN))),
        min(x1, int(math.floor(mx + ex - 0.5 + BOX_MARGIN)) + 1),
        max(y0, int(math.ceil(my - ey - 0.5 - BOX_MARGIN))),
        min(y1, int(math.floor(my + ey - 0.5 + BOX_MARGIN)) + 1),
    )


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _forward(
    means2d, conics, feats, opac, ext, bg, offsets, gauss, tiles_x, tile, H, W, k_, xs, ys, out_f, out_a, t_final,
    n_done,
):  # fmt: skip
    n_tiles = len(offsets) - 1
    C = feats.shape[1]
    # Typed constants and pixel centres keep the arithmetic in the arrays' precision (float32 in fits).
    half, amax, amin, tmin, one, zero = k_[0], k_[1], k_[2], k_[3], k_[4], k_[5]
    for t in prange(n_tiles):
        s, e = offsets[t], offsets[t + 1]
        x0, y0 = (t % tiles_x) * tile, (t // tiles_x) * tile
        x1, y1 = min(x0 + tile, W), min(y0 + tile, H)
        tw = x1 - x0
        P = tw * (y1 - y0)
        T = np.ones(P, dtype=feats.dtype)
        acc = np.zeros((P, C), dtype=feats.dtype)
        last = np.full(P, s, dtype=np.int64)
        done = np.zeros(P, dtype=np.bool_)
        alive = P
        for k in range(s, e):
            if alive == 0:
                break
            g = gauss[k]
            mx, my = means2d[g, 0], means2d[g, 1]
            a, b, cc, o = conics[g, 0], conics[g, 1], conics[g, 2], opac[g]
            bx0, bx1, by0, by1 = _bbox(mx, my, ext[g, 0], ext[g, 1], x0, x1, y0, y1)
            for py in range(by0, by1):
                dy = ys[py] - my
                for px in range(bx0, bx1):
                    i = (py - y0) * tw + px - x0
                    if done[i]:
                        continue
                    dx = xs[px] - mx
                    power = -half * (a * dx * dx + cc * dy * dy) - b * dx * dy
                    if power > zero:
                        continue
                    alpha = min(amax, o * np.exp(power))
                    if alpha < amin:
                        continue
                    test_t = T[i] * (one - alpha)
                    if test_t < tmin:
                        done[i] = True
                        alive -= 1
                        continue
                    w = alpha * T[i]
                    for c in range(C):
                        acc[i, c] += w * feats[g, c]
                    T[i] = test_t
                    last[i] = k + 1
        for py in range(y0, y1):
            for px in range(x0, x1):
                i = (py - y0) * tw + px - x0
                for c in range(C):
                    out_f[py, px, c] = acc[i, c] + T[i] * bg[c]
                out_a[py, px] = one - T[i]
                t_final[py, px] = T[i]
                n_done[py, px] = last[i]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _backward(
    means2d, conics, feats, opac, ext, bg, offsets, gauss, tiles_x, tile, H, W, k_, xs, ys, t_final, n_done, g_f,
    g_a, gm, gc, go, gf,
):  # fmt: skip
    n_tiles = len(offsets) - 1
    C = feats.shape[1]
    half, amax, amin, one, zero = k_[0], k_[1], k_[2], k_[4], k_[5]
    for t in prange(n_tiles):
        s = offsets[t]
        x0, y0 = (t % tiles_x) * tile, (t // tiles_x) * tile
        x1, y1 = min(x0 + tile, W), min(y0 + tile, H)
        tw = x1 - x0
        P = tw * (y1 - y0)
        T = np.empty(P, dtype=feats.dtype)
        tf = np.empty(P, dtype=feats.dtype)
        coef = np.empty(P, dtype=feats.dtype)  # d loss / d T_final, spread over the alphas
        last_alpha = np.zeros(P, dtype=feats.dtype)
        accum = np.zeros((P, C), dtype=feats.dtype)
        last_f = np.zeros((P, C), dtype=feats.dtype)
        gpix = np.empty((P, C), dtype=feats.dtype)
        stop = np.empty(P, dtype=np.int64)
        e = s
        for py in range(y0, y1):
            for px in range(x0, x1):
                i = (py - y0) * tw + px - x0
                T[i] = tf[i] = t_final[py, px]
                stop[i] = n_done[py, px]
                e = max(e, stop[i])
                bg_dot = zero
                for c in range(C):
                    gpix[i, c] = g_f[py, px, c]
                    bg_dot += bg[c] * g_f[py, px, c]
                coef[i] = g_a[py, px] - bg_dot
        for k in range(e - 1, s - 1, -1):
            g = gauss[k]
            mx, my = means2d[g, 0], means2d[g, 1]
            a, b, cc, o = conics[g, 0], conics[g, 1], conics[g, 2], opac[g]
            bx0, bx1, by0, by1 = _bbox(mx, my, ext[g, 0], ext[g, 1], x0, x1, y0, y1)
            g_mx = g_my = g_a_ = g_b = g_c = g_o = zero
            for py in range(by0, by1):
                dy = ys[py] - my
                for px in range(bx0, bx1):
                    i = (py - y0) * tw + px - x0
                    if k >= stop[i]:
                        continue
                    dx = xs[px] - mx
                    power = -half * (a * dx * dx + cc * dy * dy) - b * dx * dy
                    if power > zero:
                        continue
                    G = np.exp(power)
                    raw = o * G
                    alpha = min(amax, raw)
                    if alpha < amin:
                        continue
                    inv = one / (one - alpha)
                    T[i] = T[i] * inv
                    w = alpha * T[i]
                    d_alpha = zero
                    la = last_alpha[i]
                    for c in range(C):
                        gf[k, c] += w * gpix[i, c]
                        accum[i, c] = la * last_f[i, c] + (one - la) * accum[i, c]
                        last_f[i, c] = feats[g, c]
                        d_alpha += (feats[g, c] - accum[i, c]) * gpix[i, c]
                    d_alpha = d_alpha * T[i] + coef[i] * tf[i] * inv
                    last_alpha[i] = alpha
                    if raw > amax:
                        continue
                    g_o += G * d_alpha
                    d_power = raw * d_alpha
                    g_mx += d_power * (a * dx + b * dy)
                    g_my += d_power * (cc * dy + b * dx)
                    g_a_ -= half * dx * dx * d_power
                    g_b -= dx * dy * d_power
                    g_c -= half * dy * dy * d_power
            gm[k, 0] = g_mx
            gm[k, 1] = g_my
            gc[k, 0] = g_a_
            gc[k, 1] = g_b
            gc[k, 2] = g_c
            go[k] = g_o


@njit(cache=True)
def _bin(means2d, ext, order, tile, tiles_x, tiles_y):
    """Tile intersections: for each tile, the Gaussians whose box touches it, in ``order`` (front to back)."""
    M = len(order)
    rect = np.empty((M, 4), np.int64)
    counts = np.zeros(tiles_x * tiles_y + 1, np.int64)
    for g in range(M):
        x0 = min(max(int(math.floor((means2d[g, 0] - ext[g, 0]) / tile)), 0), tiles_x)
        x1 = min(max(int(math.floor((means2d[g, 0] + ext[g, 0]) / tile)) + 1, 0), tiles_x)
        y0 = min(max(int(math.floor((means2d[g, 1] - ext[g, 1]) / tile)), 0), tiles_y)
        y1 = min(max(int(math.floor((means2d[g, 1] + ext[g, 1]) / tile)) + 1, 0), tiles_y)
        rect[g, 0], rect[g, 1], rect[g, 2], rect[g, 3] = x0, x1, y0, y1
        for ty in range(y0, y1):
            for tx in range(x0, x1):
                counts[ty * tiles_x + tx + 1] += 1
    offsets = np.cumsum(counts)
    cursor = offsets[:-1].copy()
    gauss = np.empty(offsets[-1], np.int64)
    for k in range(M):
        g = order[k]
        for ty in range(rect[g, 2], rect[g, 3]):
            for tx in range(rect[g, 0], rect[g, 1]):
                t = ty * tiles_x + tx
                gauss[cursor[t]] = g
                cursor[t] += 1
    return offsets, gauss


def bin_tiles_numba(proj, tile: int = 16) -> TileBins:
    """:func:`tiles.bin_tiles` in one numba pass (same lists, same order)."""
    h, w = proj.height, proj.width
    tx_n, ty_n = (w + tile - 1) // tile, (h + tile - 1) // tile
    m2, ext = _np(proj.means2d), _np(proj.extents)
    order = np.argsort(_np(proj.depths), kind="stable")
    offsets, gauss = _bin(m2, ext, order, tile, tx_n, ty_n)
    dev = proj.means2d.device
    return TileBins(torch.from_numpy(offsets).to(dev), torch.from_numpy(gauss).to(dev), tile, tx_n, ty_n)


@njit(cache=True)
def _scatter(gauss, M, gm, gc, go, gf):
    """Sum per-intersection gradients into per-Gaussian ones."""
    C = gf.shape[1]
    om, oc = np.zeros((M, 2), gm.dtype), np.zeros((M, 3), gm.dtype)
    oo, of = np.zeros(M, gm.dtype), np.zeros((M, C), gm.dtype)
    for k in range(len(gauss)):
        g = gauss[k]
        om[g, 0] += gm[k, 0]
        om[g, 1] += gm[k, 1]
        oc[g, 0] += gc[k, 0]
        oc[g, 1] += gc[k, 1]
        oc[g, 2] += gc[k, 2]
        oo[g] += go[k]
        for c in range(C):
            of[g, c] += gf[k, c]
    return om, oc, oo, of


def _np(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().cpu().numpy()


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, feats, opac, ext, bg, bins: TileBins, H: int, W: int):
        dt = means2d.dtype
        arrays = [_np(means2d), _np(conics), _np(feats), _np(opac), _np(ext.to(dt)), _np(bg.to(dt))]
        offsets, gauss = _np(bins.offsets), _np(bins.gauss)
        C = feats.shape[1]
        npdt = arrays[0].dtype
        out_f = np.empty((H, W, C), npdt)
        out_a = np.empty((H, W), npdt)
        t_final = np.empty((H, W), npdt)
        n_done = np.empty((H, W), np.int64)
        consts = np.array([0.5, ALPHA_MAX, ALPHA_MIN, T_MIN, 1.0, 0.0], npdt)
        xs, ys = np.arange(W, dtype=npdt) + npdt.type(0.5), np.arange(H, dtype=npdt) + npdt.type(0.5)
        index = (offsets, gauss, bins.tiles_x, bins.tile, H, W, consts, xs, ys)
        _forward(*arrays, *index, out_f, out_a, t_final, n_done)
        ctx.arrays, ctx.index = arrays, index
        ctx.state = (t_final, n_done)
        dev = means2d.device
        return torch.from_numpy(out_f).to(dev), torch.from_numpy(out_a).to(dev)

    @staticmethod
    def backward(ctx, grad_f, grad_a):
        arrays = ctx.arrays
        npdt = arrays[0].dtype
        n_isect = len(ctx.index[1])
        C = arrays[2].shape[1]
        gm = np.zeros((n_isect, 2), npdt)
        gc = np.zeros((n_isect, 3), npdt)
        go = np.zeros(n_isect, npdt)
        gf = np.zeros((n_isect, C), npdt)
        g_f = np.zeros(ctx.state[0].shape + (C,), npdt) if grad_f is None else _np(grad_f).astype(npdt, copy=False)
        g_a = np.zeros(ctx.state[0].shape, npdt) if grad_a is None else _np(grad_a).astype(npdt, copy=False)
        _backward(*arrays, *ctx.index, *ctx.state, g_f, g_a, gm, gc, go, gf)
        dev = grad_f.device if grad_f is not None else grad_a.device
        om, oc, oo, of = _scatter(ctx.index[1], len(arrays[0]), gm, gc, go, gf)
        to = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
        return to(om), to(oc), to(of), to(oo), None, None, None, None, None


def composite_numba(
    means2d: Tensor, conics: Tensor, features: Tensor, opacities: Tensor, extents: Tensor, background: Tensor,
    bins: TileBins, height: int, width: int,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Same contract as :func:`tiles.composite_reference`, plus the projected ``extents`` (M, 2) that bound
    where each Gaussian's alpha can reach 1/255 (the background gets no gradient)."""
    return _Composite.apply(means2d, conics, features, opacities, extents, background, bins, height, width)
