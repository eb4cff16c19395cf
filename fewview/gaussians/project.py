"""EWA projection of 3D Gaussians into one camera (differentiable, plain PyTorch).

Shared by every rasterizer backend: only the per-pixel compositing differs between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Cameras
from .sh import eval_sh

ALPHA_MIN = 1.0 / 255.0  # a Gaussian contributes to a pixel only where its alpha reaches this
ALPHA_MAX = 0.99
T_MIN = 1e-4  # compositing stops before the transmittance would fall below this


def quat_to_rotmat(q: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) from quaternions (..., 4) in (w, x, y, z) order, normalised first."""
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(*q.shape[:-1], 3, 3)  # fmt: skip


def covariance_3d(scales: Tensor, quats: Tensor) -> Tensor:
    """Sigma = R S S^T R^T (..., 3, 3)."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


@dataclass
class Projected:
    """Gaussians visible in one camera, in depth-agnostic order (``ids`` index the input arrays)."""

    ids: Tensor  # (M,) long
    means2d: Tensor  # (M, 2) pixel coordinates (pixel centres at +0.5)
    conics: Tensor  # (M, 3) upper triangle (a, b, c) of the inverse 2-D covariance
    depths: Tensor  # (M,) camera z
    colors: Tensor  # (M, C)
    opacities: Tensor  # (M,)
    extents: Tensor  # (M, 2) half-width/height in pixels of the region where alpha >= 1/255 (no grad)
    height: int
    width: int

    @property
    def radii(self) -> Tensor:
        return self.extents.amax(-1)


def project(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    cam: Cameras,
    sh_degree: int | None = None,
    near: float = 0.01,
    eps2d: float = 0.3,
) -> Projected:
    """Project N Gaussians (means (N,3), quats (N,4) wxyz, scales (N,3), opacities (N,), colours
    (N,C) or SH coefficients (N,K,3) when ``sh_degree`` is given) into camera ``cam`` (one camera).

    The 2-D covariance is J W Sigma W^T J^T plus ``eps2d`` on the diagonal (the low-pass dilation of 3DGS);
    the Jacobian uses the view direction clamped to 1.3x the field of view, as the reference code does.
    """
    if len(cam) != 1:
        raise ValueError(f"project takes one camera, got {len(cam)}")
    dt, dev = means.dtype, means.device
    h, w = int(cam.size[0, 0]), int(cam.size[0, 1])
    c2w = cam.c2w[0].to(dev, dt)
    K = cam.K[0].to(dev, dt)
    R = c2w[:3, :3].T
    t = -R @ c2w[:3, 3]
    p = means @ R.T + t
    z = p[:, 2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    with torch.no_grad():
        keep = (z > near) & (opacities >= ALPHA_MIN)
    ids = keep.nonzero().squeeze(1)
    p, z = p[ids], z[ids]
    cov = covariance_3d(scales[ids], quats[ids])
    tan_x, tan_y = 0.5 * w / fx, 0.5 * h / fy
    lim_xp, lim_xn = (w - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_yp, lim_yn = (h - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    tx = z * torch.minimum(torch.maximum(p[:, 0] / z, -lim_xn), lim_xp)
    ty = z * torch.minimum(torch.maximum(p[:, 1] / z, -lim_yn), lim_yp)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], -1).reshape(-1, 2, 3)
    T = J @ R
    cov2 = T @ cov @ T.transpose(-1, -2)
    a = cov2[:, 0, 0] + eps2d
    b = cov2[:, 0, 1]
    c = cov2[:, 1, 1] + eps2d
    det = a * c - b * b
    conics = torch.stack([c / det, -b / det, a / det], -1)
    means2d = torch.stack([fx * p[:, 0] / z + cx, fy * p[:, 1] / z + cy], -1)

    with torch.no_grad():
        # Region where o * exp(-d^T Sigma^-1 d / 2) >= 1/255: an ellipse of "radius" sqrt(2 ln(255 o)).
        op = opacities[ids]
        level = 2.0 * torch.log((op / ALPHA_MIN).clamp_min(1.0))
        ext = torch.stack([(level * a).clamp_min(0).sqrt(), (level * c).clamp_min(0).sqrt()], -1)
        m2 = means2d.detach()
        on = (
            (det > 0)
            & (level > 0)
            & (m2[:, 0] + ext[:, 0] > 0)
            & (m2[:, 0] - ext[:, 0] < w)
            & (m2[:, 1] + ext[:, 1] > 0)
            & (m2[:, 1] - ext[:, 1] < h)
        )
    sel = on.nonzero().squeeze(1)
    ids = ids[sel]
    if sh_degree is None:
        cols = colors[ids]
    else:
        center = c2w[:3, 3]
        dirs = torch.nn.functional.normalize(means[ids] - center, dim=-1)
        cols = eval_sh(sh_degree, colors[ids], dirs)
    return Projected(ids, means2d[sel], conics[sel], z[sel], cols, opacities[ids], ext[sel], h, w)


def isotropic_footprint(sigma_world: float, z: float, f: float, eps2d: float = 0.3) -> float:
    """Standard deviation in pixels of an isotropic Gaussian of world std ``sigma_world`` seen on the
    optical axis at depth ``z`` by a camera of focal ``f`` pixels (with the low-pass dilation)."""
    return math.sqrt((f * sigma_world / z) ** 2 + eps2d)
