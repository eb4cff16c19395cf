"""Fused EWA projection + SH colour for the CPU fast path: one numba pass per Gaussian forward, and a
hand-derived backward (quaternion/scale -> 3-D covariance -> 2-D conic, centre, depth, SH colour and its
view direction). Same outputs as :func:`project.project`, checked against it in the tests."""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from ..cameras import Cameras
from .project import ALPHA_MIN, Projected
from .sh import C0, C1, C2, C3

FASTMATH = True
CHUNK = 256  # Gaussians per parallel work item


@njit(inline="always")
def _sh_basis(deg, x, y, z, out):
    xx, yy, zz = x * x, y * y, z * z
    out[0] = C0
    if deg > 0:
        out[1] = -C1 * y
        out[2] = C1 * z
        out[3] = -C1 * x
    if deg > 1:
        out[4] = C2[0] * x * y
        out[5] = C2[1] * y * z
        out[6] = C2[2] * (2 * zz - xx - yy)
        out[7] = C2[3] * x * z
        out[8] = C2[4] * (xx - yy)
    if deg > 2:
        out[9] = C3[0] * y * (3 * xx - yy)
        out[10] = C3[1] * x * y * z
        out[11] = C3[2] * y * (4 * zz - xx - yy)
        out[12] = C3[3] * z * (2 * zz - 3 * xx - 3 * yy)
        out[13] = C3[4] * x * (4 * zz - xx - yy)
        out[14] = C3[5] * z * (xx - yy)
        out[15] = C3[6] * x * (xx - 3 * yy)


@njit(inline="always")
def _sh_basis_grad(deg, x, y, z, gx, gy, gz):
    """d basis_k / d(x, y, z) of the polynomials above (direction not yet normalised)."""
    for k in range(16):
        gx[k] = gy[k] = gz[k] = 0.0
    xx, yy, zz = x * x, y * y, z * z
    if deg > 0:
        gy[1] = -C1
        gz[2] = C1
        gx[3] = -C1
    if deg > 1:
        gx[4], gy[4] = C2[0] * y, C2[0] * x
        gy[5], gz[5] = C2[1] * z, C2[1] * y
        gx[6], gy[6], gz[6] = -2 * C2[2] * x, -2 * C2[2] * y, 4 * C2[2] * z
        gx[7], gz[7] = C2[3] * z, C2[3] * x
        gx[8], gy[8] = 2 * C2[4] * x, -2 * C2[4] * y
    if deg > 2:
        gx[9], gy[9] = 6 * C3[0] * x * y, C3[0] * (3 * xx - 3 * yy)
        gx[10], gy[10], gz[10] = C3[1] * y * z, C3[1] * x * z, C3[1] * x * y
        gx[11], gy[11], gz[11] = -2 * C3[2] * x * y, C3[2] * (4 * zz - xx - 3 * yy), 8 * C3[2] * y * z
        gx[12], gy[12], gz[12] = -6 * C3[3] * x * z, -6 * C3[3] * y * z, C3[3] * (6 * zz - 3 * xx - 3 * yy)
        gx[13], gy[13], gz[13] = C3[4] * (4 * zz - 3 * xx - yy), -2 * C3[4] * x * y, 8 * C3[4] * x * z
        gx[14], gy[14], gz[14] = 2 * C3[5] * x * z, -2 * C3[5] * y * z, C3[5] * (xx - yy)
        gx[15], gy[15] = C3[6] * (3 * xx - 3 * yy), -6 * C3[6] * x * y


@njit(inline="always")
def _quat_rot(qw, qx, qy, qz, Rq):
    n = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
    w, x, y, z = qw / n, qx / n, qy / n, qz / n
    Rq[0, 0] = 1 - 2 * (y * y + z * z)
    Rq[0, 1] = 2 * (x * y - w * z)
    Rq[0, 2] = 2 * (x * z + w * y)
    Rq[1, 0] = 2 * (x * y + w * z)
    Rq[1, 1] = 1 - 2 * (x * x + z * z)
    Rq[1, 2] = 2 * (y * z - w * x)
    Rq[2, 0] = 2 * (x * z - w * y)
    Rq[2, 1] = 2 * (y * z + w * x)
    Rq[2, 2] = 1 - 2 * (x * x + y * y)
    return n, w, x, y, z


@njit(inline="always")
def _geometry(i, means, quats, scales, R, t, cam, Rq, Sig, Tm):
    """Camera point, clamped tangents, J R (Tm) and the 3-D covariance of Gaussian i."""
    fx, fy, lxp, lxn, lyp, lyn = cam[0], cam[1], cam[4], cam[5], cam[6], cam[7]
    mx, my, mz = means[i, 0], means[i, 1], means[i, 2]
    px = R[0, 0] * mx + R[0, 1] * my + R[0, 2] * mz + t[0]
    py = R[1, 0] * mx + R[1, 1] * my + R[1, 2] * mz + t[1]
    pz = R[2, 0] * mx + R[2, 1] * my + R[2, 2] * mz + t[2]
    ux, uy = px / pz, py / pz
    cx_ok = -lxn <= ux <= lxp
    cy_ok = -lyn <= uy <= lyp
    tx = pz * min(max(ux, -lxn), lxp)
    ty = pz * min(max(uy, -lyn), lyp)
    J00, J02 = fx / pz, -fx * tx / (pz * pz)
    J11, J12 = fy / pz, -fy * ty / (pz * pz)
    for j in range(3):
        Tm[0, j] = J00 * R[0, j] + J02 * R[2, j]
        Tm[1, j] = J11 * R[1, j] + J12 * R[2, j]
    _quat_rot(quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3], Rq)
    for a in range(3):
        for b in range(3):
            acc = 0.0
            for k in range(3):
                acc += Rq[a, k] * Rq[b, k] * scales[i, k] * scales[i, k]
            Sig[a, b] = acc
    return px, py, pz, tx, ty, cx_ok, cy_ok


@njit(inline="always")
def _cov2d(Tm, Sig, eps2d):
    c00 = c01 = c11 = 0.0
    for a in range(3):
        for b in range(3):
            c00 += Tm[0, a] * Sig[a, b] * Tm[0, b]
            c01 += Tm[0, a] * Sig[a, b] * Tm[1, b]
            c11 += Tm[1, a] * Sig[a, b] * Tm[1, b]
    return c00 + eps2d, c01, c11 + eps2d


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _forward(means, quats, scales, opac, sh, deg, R, t, campos, cam, H, W, near, eps2d,
             vis, means2d, conics, depths, colors, ext):  # fmt: skip
    N = means.shape[0]
    n_chunks = (N + CHUNK - 1) // CHUNK
    for ch_ in prange(n_chunks):  # scratch arrays are allocated once per chunk, not per Gaussian
        Rq = np.empty((3, 3))
        Sig = np.empty((3, 3))
        Tm = np.empty((2, 3))
        basis = np.empty(16)
        for i in range(ch_ * CHUNK, min((ch_ + 1) * CHUNK, N)):
            _forward_one(i, means, quats, scales, opac, sh, deg, R, t, campos, cam, H, W, near, eps2d, vis,
                         means2d, conics, depths, colors, ext, Rq, Sig, Tm, basis)  # fmt: skip


@njit(inline="always")
def _forward_one(i, means, quats, scales, opac, sh, deg, R, t, campos, cam, H, W, near, eps2d, vis, means2d,
                 conics, depths, colors, ext, Rq, Sig, Tm, basis):  # fmt: skip
    vis[i] = False
    if opac[i] < ALPHA_MIN:
        return
    mx, my, mz = means[i, 0], means[i, 1], means[i, 2]
    pz = R[2, 0] * mx + R[2, 1] * my + R[2, 2] * mz + t[2]
    if pz <= near:
        return
    px, py, pz, tx, ty, cxo, cyo = _geometry(i, means, quats, scales, R, t, cam, Rq, Sig, Tm)
    a, b, c = _cov2d(Tm, Sig, eps2d)
    det = a * c - b * b
    level = 2.0 * math.log(max(opac[i] / ALPHA_MIN, 1.0))
    if not (det > 0.0) or level <= 0.0:
        return
    u = cam[0] * px / pz + cam[2]
    v = cam[1] * py / pz + cam[3]
    ex, ey = math.sqrt(level * a), math.sqrt(level * c)
    if u + ex <= 0 or u - ex >= W or v + ey <= 0 or v - ey >= H:
        return
    vis[i] = True
    means2d[i, 0], means2d[i, 1] = u, v
    conics[i, 0], conics[i, 1], conics[i, 2] = c / det, -b / det, a / det
    depths[i] = pz
    ext[i, 0], ext[i, 1] = ex, ey
    dx, dy, dz = mx - campos[0], my - campos[1], mz - campos[2]
    dn = math.sqrt(dx * dx + dy * dy + dz * dz)
    _sh_basis(deg, dx / dn, dy / dn, dz / dn, basis)
    for ch in range(3):
        acc = 0.5
        for k in range((deg + 1) * (deg + 1)):
            acc += basis[k] * sh[i, k, ch]
        colors[i, ch] = max(acc, 0.0)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _backward(means, quats, scales, sh, deg, R, t, campos, cam, eps2d, ids, g2d, gcon, gdep, gcol,
              gmeans, gquats, gscales, gsh):  # fmt: skip
    M = len(ids)
    n_chunks = (M + CHUNK - 1) // CHUNK
    for ch_ in prange(n_chunks):
        Rq, dRq, Sig, dSig = np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3))
        Tm, dTm = np.empty((2, 3)), np.empty((2, 3))
        basis, bx, by, bz = np.empty(16), np.empty(16), np.empty(16), np.empty(16)
        for j in range(ch_ * CHUNK, min((ch_ + 1) * CHUNK, M)):
            _backward_one(j, means, quats, scales, sh, deg, R, t, campos, cam, eps2d, ids, g2d, gcon, gdep, gcol,
                          gmeans, gquats, gscales, gsh, Rq, dRq, Sig, dSig, Tm, dTm, basis, bx, by, bz)  # fmt: skip


@njit(inline="always")
def _backward_one(j, means, quats, scales, sh, deg, R, t, campos, cam, eps2d, ids, g2d, gcon, gdep, gcol,
                  gmeans, gquats, gscales, gsh, Rq, dRq, Sig, dSig, Tm, dTm, basis, bx, by, bz):  # fmt: skip
    fx, fy = cam[0], cam[1]
    i = ids[j]
    px, py, pz, tx, ty, cxo, cyo = _geometry(i, means, quats, scales, R, t, cam, Rq, Sig, Tm)
    a, b, c = _cov2d(Tm, Sig, eps2d)
    det = a * c - b * b
    id2 = 1.0 / (det * det)
    g0, g1, g2 = gcon[j, 0], gcon[j, 1], gcon[j, 2]
    # conic = (c, -b, a) / det  ->  d loss / d (a, b, c)
    ga = g0 * (-c * c * id2) + g1 * (b * c * id2) + g2 * (1.0 / det - a * c * id2)
    gb = g0 * (2 * b * c * id2) + g1 * (-1.0 / det - 2 * b * b * id2) + g2 * (2 * a * b * id2)
    gc = g0 * (1.0 / det - a * c * id2) + g1 * (a * b * id2) + g2 * (-a * a * id2)
    G00, G01, G11 = ga, 0.5 * gb, gc
    # cov2 = Tm Sig Tm^T: dSig = Tm^T G Tm, dTm = 2 G Tm Sig
    for p in range(3):
        for q in range(3):
            dSig[p, q] = (Tm[0, p] * (G00 * Tm[0, q] + G01 * Tm[1, q])
                          + Tm[1, p] * (G01 * Tm[0, q] + G11 * Tm[1, q]))  # fmt: skip
    for q in range(3):
        s0 = s1 = 0.0
        for k in range(3):
            s0 += Tm[0, k] * Sig[k, q]
            s1 += Tm[1, k] * Sig[k, q]
        dTm[0, q] = 2 * (G00 * s0 + G01 * s1)
        dTm[1, q] = 2 * (G01 * s0 + G11 * s1)
    # Tm = J R
    dJ00 = dTm[0, 0] * R[0, 0] + dTm[0, 1] * R[0, 1] + dTm[0, 2] * R[0, 2]
    dJ02 = dTm[0, 0] * R[2, 0] + dTm[0, 1] * R[2, 1] + dTm[0, 2] * R[2, 2]
    dJ11 = dTm[1, 0] * R[1, 0] + dTm[1, 1] * R[1, 1] + dTm[1, 2] * R[1, 2]
    dJ12 = dTm[1, 0] * R[2, 0] + dTm[1, 1] * R[2, 1] + dTm[1, 2] * R[2, 2]
    z2, z3 = pz * pz, pz * pz * pz
    dpx = g2d[j, 0] * fx / pz
    dpy = g2d[j, 1] * fy / pz
    dpz = -g2d[j, 0] * fx * px / z2 - g2d[j, 1] * fy * py / z2 + gdep[j]
    dpz += -dJ00 * fx / z2 - dJ11 * fy / z2
    if cxo:
        dpx += -dJ02 * fx / z2
        dpz += dJ02 * 2 * fx * tx / z3
    else:
        dpz += dJ02 * fx * tx / z3
    if cyo:
        dpy += -dJ12 * fy / z2
        dpz += dJ12 * 2 * fy * ty / z3
    else:
        dpz += dJ12 * fy * ty / z3
    for k in range(3):
        gmeans[i, k] = R[0, k] * dpx + R[1, k] * dpy + R[2, k] * dpz
    # Sig = M M^T, M = Rq diag(s)
    for k in range(3):
        s = scales[i, k]
        acc = 0.0
        for r in range(3):
            dM = 0.0
            for q in range(3):
                dM += 2 * dSig[r, q] * Rq[q, k] * s
            dRq[r, k] = dM * s
            acc += dM * Rq[r, k]
        gscales[i, k] = acc
    n, w, x, y, z = _quat_rot(quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3], Rq)
    dw = 2 * (-z * dRq[0, 1] + y * dRq[0, 2] + z * dRq[1, 0] - x * dRq[1, 2] - y * dRq[2, 0] + x * dRq[2, 1])
    dx = 2 * (y * dRq[0, 1] + z * dRq[0, 2] + y * dRq[1, 0] - 2 * x * dRq[1, 1] - w * dRq[1, 2]
              + z * dRq[2, 0] + w * dRq[2, 1] - 2 * x * dRq[2, 2])  # fmt: skip
    dy = 2 * (-2 * y * dRq[0, 0] + x * dRq[0, 1] + w * dRq[0, 2] + x * dRq[1, 0] + z * dRq[1, 2]
              - w * dRq[2, 0] + z * dRq[2, 1] - 2 * y * dRq[2, 2])  # fmt: skip
    dz = 2 * (-2 * z * dRq[0, 0] - w * dRq[0, 1] + x * dRq[0, 2] + w * dRq[1, 0] - 2 * z * dRq[1, 1]
              + y * dRq[1, 2] + x * dRq[2, 0] + y * dRq[2, 1])  # fmt: skip
    dot = w * dw + x * dx + y * dy + z * dz
    gquats[i, 0] = (dw - w * dot) / n
    gquats[i, 1] = (dx - x * dot) / n
    gquats[i, 2] = (dy - y * dot) / n
    gquats[i, 3] = (dz - z * dot) / n
    # colour = clamp(sum_k B_k(d) c_k + 0.5, 0), d = (m - campos) / |m - campos|
    vx, vy, vz = means[i, 0] - campos[0], means[i, 1] - campos[1], means[i, 2] - campos[2]
    vn = math.sqrt(vx * vx + vy * vy + vz * vz)
    ux, uy, uz = vx / vn, vy / vn, vz / vn
    K = (deg + 1) * (deg + 1)
    _sh_basis(deg, ux, uy, uz, basis)
    _sh_basis_grad(deg, ux, uy, uz, bx, by, bz)
    ddx = ddy = ddz = 0.0
    for ch in range(3):
        acc = 0.5
        for k in range(K):
            acc += basis[k] * sh[i, k, ch]
        gch = gcol[j, ch] if acc > 0.0 else 0.0
        for k in range(K):
            gsh[i, k, ch] = basis[k] * gch
            ddx += bx[k] * sh[i, k, ch] * gch
            ddy += by[k] * sh[i, k, ch] * gch
            ddz += bz[k] * sh[i, k, ch] * gch
    dot = ux * ddx + uy * ddy + uz * ddz
    gmeans[i, 0] += (ddx - ux * dot) / vn
    gmeans[i, 1] += (ddy - uy * dot) / vn
    gmeans[i, 2] += (ddz - uz * dot) / vn


def _camera_arrays(cam: Cameras, dtype):
    h, w = int(cam.size[0, 0]), int(cam.size[0, 1])
    c2w = cam.c2w[0].double()
    R = c2w[:3, :3].T
    t = -R @ c2w[:3, 3]
    K = cam.K[0].double()
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    tan_x, tan_y = 0.5 * w / fx, 0.5 * h / fy
    lims = [(w - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x, (h - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y]
    camv = np.array([fx, fy, cx, cy, *lims], dtype=np.float64)
    return R.numpy().astype(dtype), t.numpy().astype(dtype), c2w[:3, 3].numpy().astype(dtype), camv, h, w


def _np(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().cpu().numpy()


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opac, sh, deg: int, cam: Cameras, near: float, eps2d: float):
        arrs = [_np(means), _np(quats), _np(scales), _np(opac), _np(sh)]
        dt = arrs[0].dtype
        R, t, campos, camv, h, w = _camera_arrays(cam, dt)
        N = len(arrs[0])
        vis = np.empty(N, np.bool_)
        m2, con, dep = np.zeros((N, 2), dt), np.zeros((N, 3), dt), np.zeros(N, dt)
        col, ext = np.zeros((N, 3), dt), np.zeros((N, 2), dt)
        _forward(*arrs, deg, R, t, campos, camv, h, w, near, eps2d, vis, m2, con, dep, col, ext)
        ids = np.nonzero(vis)[0]
        ctx.saved = (arrs, deg, R, t, campos, camv, eps2d, ids)
        dev = means.device
        out = [torch.from_numpy(np.ascontiguousarray(a[ids])).to(dev) for a in (m2, con, dep, col)]
        ext_t = torch.from_numpy(np.ascontiguousarray(ext[ids])).to(dev)
        ids_t = torch.from_numpy(ids).to(dev)
        ctx.mark_non_differentiable(ext_t, ids_t)
        return (*out, ext_t, ids_t, h, w)

    @staticmethod
    def backward(ctx, g2d, gcon, gdep, gcol, *_):
        arrs, deg, R, t, campos, camv, eps2d, ids = ctx.saved
        means, quats, scales, opac, sh = arrs
        dt = means.dtype
        gm, gq, gs = np.zeros_like(means), np.zeros_like(quats), np.zeros_like(scales)
        gsh = np.zeros_like(sh)

        def arr(g, shape):
            return np.zeros(shape, dt) if g is None else _np(g).astype(dt, copy=False)

        M = len(ids)
        _backward(means, quats, scales, sh, deg, R, t, campos, camv, eps2d, ids, arr(g2d, (M, 2)),
                  arr(gcon, (M, 3)), arr(gdep, (M,)), arr(gcol, (M, 3)), gm, gq, gs, gsh)  # fmt: skip
        dev = (g2d if g2d is not None else gcon).device
        to = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
        return to(gm), to(gq), to(gs), None, to(gsh), None, None, None, None


def project_fused(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, sh: Tensor, cam: Cameras, sh_degree: int,
    near: float = 0.01, eps2d: float = 0.3,
) -> Projected:  # fmt: skip
    """:func:`project.project` for SH colours, in one numba pass (CPU tensors)."""
    if not 0 <= sh_degree <= 3 or sh.shape[1] < (sh_degree + 1) ** 2:
        raise ValueError(f"SH degree {sh_degree} with {sh.shape[1]} coefficients")
    m2, con, dep, col, ext, ids, h, w = _Project.apply(means, quats, scales, opacities, sh, sh_degree, cam, near, eps2d)
    return Projected(ids, m2, con, dep, col, opacities[ids], ext, h, w)
