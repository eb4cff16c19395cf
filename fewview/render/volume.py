"""Volume rendering as stateless functions.

Rays are (R,) bundles of origins/directions (unit). Samples along a ray are distances ``t``.
Compositing follows the usual quadrature: alpha_i = 1 - exp(-sigma_i * delta_i),
T_i = prod_{j<i} (1 - alpha_j), w_i = T_i * alpha_i, C = sum w_i c_i + (1 - sum w_i) * background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def ray_aabb(origins: Tensor, directions: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test. Returns (t_near, t_far, hit) per ray; t_near is clamped at 0 (origins inside the box)."""
    inv = 1.0 / torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0 = (aabb[0] - origins) * inv
    t1 = (aabb[1] - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far, t_far > t_near


def sample_stratified(near: Tensor, far: Tensor, n: int, perturb: bool = True, generator=None) -> Tensor:
    """(R, n) distances: one sample in each of n equal bins of [near, far] (bin centres if not perturbed)."""
    u = torch.arange(n, device=near.device, dtype=near.dtype)
    if perturb:
        u = u + torch.rand(near.shape[0], n, device=near.device, dtype=near.dtype, generator=generator)
    else:
        u = (u + 0.5).expand(near.shape[0], n)
    return near[:, None] + (far - near)[:, None] * (u / n)


def sample_pdf(bins: Tensor, weights: Tensor, n: int, perturb: bool = True, generator=None) -> Tensor:
    """Importance sampling: (R, n) distances drawn from the piecewise-constant pdf ``weights`` (R, B)
    over bin edges ``bins`` (R, B + 1), by inverting the CDF."""
    w = weights.detach() + 1e-5
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), pdf.cumsum(-1)], -1).clamp(max=1.0)
    if perturb:
        u = torch.rand(*cdf.shape[:-1], n, device=cdf.device, dtype=cdf.dtype, generator=generator)
    else:
        u = ((torch.arange(n, device=cdf.device, dtype=cdf.dtype) + 0.5) / n).expand(*cdf.shape[:-1], n)
    idx = torch.searchsorted(cdf, u.contiguous(), right=True).clamp(1, cdf.shape[-1] - 1)
    c0, c1 = cdf.gather(-1, idx - 1), cdf.gather(-1, idx)
    b0, b1 = bins.detach().gather(-1, idx - 1), bins.detach().gather(-1, idx)
    frac = ((u - c0) / (c1 - c0).clamp_min(1e-8)).clamp(0, 1)
    return b0 + frac * (b1 - b0)


def alpha_from_density(sigma: Tensor, deltas: Tensor) -> Tensor:
    return 1.0 - torch.exp(-sigma * deltas)


def weights_from_alpha(alpha: Tensor) -> tuple[Tensor, Tensor]:
    """(weights, transmittance before each sample) for (R, S) alphas."""
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha], -1), -1)
    return alpha * trans[:, :-1], trans[:, :-1]


@dataclass
class RenderOutput:
    """Per-ray outputs plus the contributing samples in packed form (K samples over R rays)."""

    rgb: Tensor  # (R, 3)
    depth: Tensor  # (R,) expected distance along the ray (not normalised by opacity)
    opacity: Tensor  # (R,)
    weights: Tensor  # (K,)
    t: Tensor  # (K,) sample distances
    deltas: Tensor  # (K,) sample widths
    ray_indices: Tensor  # (K,) which ray each sample belongs to (sorted)
    num_samples: int = 0  # samples the density was evaluated at
    sample_rgb: Tensor | None = None  # (K, 3) per-sample colours (zero where not evaluated)


def segment_starts(ray_indices: Tensor, n_rays: int) -> Tensor:
    """(K,) index of the first sample of each sample's ray (``ray_indices`` sorted)."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    first = torch.cumsum(counts, 0) - counts
    return first[ray_indices]


def segmented_exclusive_cumsum(v: Tensor, ray_indices: Tensor, n_rays: int, start: Tensor | None = None) -> Tensor:
    """For packed values, the sum of ``v`` over the earlier samples of the same ray: a global cumulative sum
    in float64 minus its value at each ray's first sample (``start`` from :func:`segment_starts`)."""
    if v.numel() == 0:
        return v
    excl = torch.cumsum(v.double(), 0) - v.double()
    start = segment_starts(ray_indices, n_rays) if start is None else start
    return (excl - excl[start]).to(v.dtype)


def transmittance_packed(tau: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """T_k = exp(-sum of tau over the earlier samples of the same ray), for packed optical depths ``tau``."""
    return torch.exp(-segmented_exclusive_cumsum(tau, ray_indices, n_rays))


def weights_packed(sigma: Tensor, deltas: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Compositing weights T_k * (1 - exp(-sigma_k delta_k)) of packed samples."""
    tau = sigma * deltas
    return transmittance_packed(tau, ray_indices, n_rays) * (1 - torch.exp(-tau))


def accumulate(values: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Sum packed per-sample values (K,) or (K, C) into rays (R,) or (R, C)."""
    out = torch.zeros((n_rays, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add(0, ray_indices, values)


def composite_packed(
    sigma: Tensor,
    rgb: Tensor,
    t: Tensor,
    deltas: Tensor,
    ray_indices: Tensor,
    n_rays: int,
    background: Tensor | float | None = None,
) -> RenderOutput:
    """Composite packed samples (sorted by ray, front to back within a ray)."""
    w = weights_packed(sigma, deltas, ray_indices, n_rays)
    acc = accumulate(w, ray_indices, n_rays)
    color = accumulate(w[:, None] * rgb, ray_indices, n_rays)
    if background is not None:
        color = color + (1 - acc)[:, None] * torch.as_tensor(background, dtype=color.dtype, device=color.device)
    depth = accumulate(w * t, ray_indices, n_rays)
    return RenderOutput(color, depth, acc, w, t, deltas, ray_indices, sigma.numel(), rgb)


def composite(
    sigma: Tensor, rgb: Tensor, t: Tensor, deltas: Tensor, background: Tensor | float | None = None
) -> RenderOutput:
    """Composite dense (R, S) densities and (R, S, 3) colours with an explicit cumulative product (the
    reference that the packed path is tested against)."""
    alpha = alpha_from_density(sigma, deltas)
    w, _ = weights_from_alpha(alpha)
    acc = w.sum(-1)
    color = (w[..., None] * rgb).sum(-2)
    if background is not None:
        bg = torch.as_tensor(background, dtype=color.dtype, device=color.device)
        color = color + (1 - acc)[:, None] * bg
    r, s = sigma.shape
    ray_indices = torch.arange(r, device=sigma.device).repeat_interleave(s)
    return RenderOutput(
        color, (w * t).sum(-1), acc, w.reshape(-1), t.reshape(-1), deltas.reshape(-1), ray_indices, r * s
    )


def distortion_loss(out: RenderOutput) -> Tensor:
    """Mip-NeRF 360's distortion loss per ray (R,), in O(K) with segmented prefix sums:
    sum_ij w_i w_j |t_i - t_j| + 1/3 sum_i w_i^2 delta_i."""
    w, t, ri = out.weights, out.t, out.ray_indices
    n = out.rgb.shape[0]
    if w.numel() == 0:
        return torch.zeros(n, dtype=out.rgb.dtype, device=out.rgb.device)
    start = segment_starts(ri, n)
    w_before = segmented_exclusive_cumsum(w, ri, n, start)
    wt_before = segmented_exclusive_cumsum(w * t, ri, n, start)
    inter = 2 * w * (t * w_before - wt_before)
    intra = w.pow(2) * out.deltas / 3
    return accumulate(inter + intra, ri, n)


def opacity_entropy_loss(opacity: Tensor) -> Tensor:
    """Binary entropy of per-ray opacity (pushes rays to fully empty or fully opaque)."""
    o = opacity.clamp(1e-5, 1 - 1e-5)
    return -(o * torch.log(o) + (1 - o) * torch.log(1 - o))
