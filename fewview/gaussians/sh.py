"""Real spherical harmonics up to degree 3 with the constants and sign convention of 3DGS."""

from __future__ import annotations

import torch
from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """The DC coefficient whose colour (after the +0.5 offset) is ``rgb``."""
    return (rgb - 0.5) / C0


def sh_to_rgb(dc: Tensor) -> Tensor:
    return dc * C0 + 0.5


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis (..., (degree+1)^2) at unit directions (..., 3), in the 3DGS order and signs."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    b = [torch.full_like(x, C0)]
    if degree > 0:
        b += [-C1 * y, C1 * z, -C1 * x]
    if degree > 1:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        b += [C2[0] * xy, C2[1] * yz, C2[2] * (2 * zz - xx - yy), C2[3] * xz, C2[4] * (xx - yy)]
        if degree > 2:
            b += [
                C3[0] * y * (3 * xx - yy),
                C3[1] * xy * z,
                C3[2] * y * (4 * zz - xx - yy),
                C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
                C3[4] * x * (4 * zz - xx - yy),
                C3[5] * z * (xx - yy),
                C3[6] * x * (xx - 3 * yy),
            ]
    return torch.stack(b, -1)


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Colour (..., 3) = sum_k Y_k(dir) c_k + 0.5, clamped at 0, from coefficients (..., K, 3) with
    K >= (degree+1)^2 and unit directions (..., 3)."""
    k = num_sh_bases(degree)
    if coeffs.shape[-2] < k:
        raise ValueError(f"degree {degree} needs {k} SH coefficients, got {coeffs.shape[-2]}")
    basis = sh_basis(degree, dirs)
    out = (basis.unsqueeze(-2) @ coeffs[..., :k, :]).squeeze(-2)
    return (out + 0.5).clamp_min(0.0)


def sh_basis_reference(degree: int, dirs: Tensor) -> Tensor:
    """The same basis from the textbook polynomials (3z^2 - 1 rather than 2z^2 - x^2 - y^2, ...), which agree
    on the unit sphere only: a check of the constants and signs above."""
    x, y, z = dirs.unbind(-1)
    b = [torch.full_like(x, C0)]
    if degree > 0:
        b += [-C1 * y, C1 * z, -C1 * x]
    if degree > 1:
        b += [C2[0] * x * y, C2[1] * y * z, C2[2] * (3 * z * z - 1), C2[3] * x * z, C2[4] * (x * x - y * y)]
    if degree > 2:
        b += [
            C3[0] * y * (3 * x * x - y * y),
            C3[1] * x * y * z,
            C3[2] * y * (5 * z * z - 1),
            C3[3] * z * (5 * z * z - 3),
            C3[4] * x * (5 * z * z - 1),
            C3[5] * z * (x * x - y * y),
            C3[6] * x * (x * x - 3 * y * y),
        ]
    return torch.stack(b, -1)
