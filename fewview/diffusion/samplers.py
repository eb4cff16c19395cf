"""Samplers over arbitrary timestep grids: DDIM (η) and PLMS (PNDM's pseudo linear multistep), classifier-free
guidance, the multi-step denoiser SparseFusion's distillation calls, and the score-distillation residual.

A denoiser is a function ``fn(x_t, t) -> output`` in the schedule's parameterisation (ε, v or x0) for an
integer timestep ``t``. On diffusers' own grids (:meth:`NoiseSchedule.grid`) the samplers reproduce
``DDIMScheduler.step`` and ``PNDMScheduler.step`` (skip_prk_steps); the grids may also start anywhere, which
the multi-step denoiser needs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .schedule import NoiseSchedule

Denoiser = Callable[[Tensor, int], Tensor]
SAMPLERS = ("ddim", "plms")


def classifier_free_guidance(cond_out: Tensor, uncond_out: Tensor, scale: float) -> Tensor:
    """u + s (c − u); s = 1 is the conditional output, s = 0 the unconditional one."""
    return uncond_out + scale * (cond_out - uncond_out)


def ddim_update(x: Tensor, eps: Tensor, x0: Tensor, a_t: Tensor, a_prev: Tensor, eta: float = 0.0,
                noise: Tensor | None = None) -> Tensor:  # fmt: skip
    """One DDIM step from ᾱ_t to ᾱ_prev (Song et al. eq. 12); η = 0 is deterministic, η = 1 DDPM-like."""
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp_min(0).sqrt()
    out = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
    if eta > 0:
        out = out + sigma * (noise if noise is not None else torch.randn_like(x))
    return out


def _plms_eps(ets: list[Tensor]) -> Tensor:
    """Adams–Bashforth combination of the last (up to four) ε evaluations, as PNDM's PLMS."""
    if len(ets) == 1:
        return ets[-1]
    if len(ets) == 2:
        return (3 * ets[-1] - ets[-2]) / 2
    if len(ets) == 3:
        return (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
    return (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24


def dynamic_threshold(x0: Tensor, ratio: float = 0.995) -> Tensor:
    """Imagen's dynamic thresholding (as DFM's sampler): per sample, s = the ``ratio`` quantile of |x0|, at least
    1; x0 is clipped to [-s, s] and divided by s, so it always lies in [-1, 1]."""
    s = torch.quantile(x0.flatten(1).abs().float(), ratio, dim=1).to(x0.dtype).clamp_min(1.0)
    s = s.view(-1, *([1] * (x0.dim() - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def sample_grid(fn: Denoiser, x: Tensor, grid: list[int], schedule: NoiseSchedule, method: str = "ddim",
                eta: float = 0.0, generator: torch.Generator | None = None, clip_x0: float | None = None,
                progress: bool = False, threshold: float | None = None) -> tuple[Tensor, int]:  # fmt: skip
    """Integrate from ``x`` at ``grid[0]`` down the grid (ending at -1, clean). Returns (x0, model calls).
    ``clip_x0`` clips the clean estimate to ±clip_x0; ``threshold`` applies dynamic thresholding at that quantile
    (both re-derive ε from the clipped estimate). ``eta`` > 0 makes a step stochastic (η = 1: the DDPM posterior,
    ancestral sampling), for PLMS too: SparseFusion's official sampler combines the raw ε evaluations linearly,
    clips the clean estimate of the combination and takes a posterior step from it."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}: choose one of {SAMPLERS}")
    if len(grid) < 2 or grid[-1] != -1 or any(a <= b for a, b in zip(grid, grid[1:], strict=False)):
        raise ValueError(f"a sampling grid decreases strictly and ends at -1 (clean); got {grid[:4]}...{grid[-2:]}")
    calls = 0
    clips = clip_x0 is not None or threshold is not None

    def eps_of(xt: Tensor, t: int) -> Tensor:
        nonlocal calls
        calls += 1
        return schedule.eps_x0(fn(xt, t), xt, t)[0]

    def step(xt: Tensor, eps: Tensor, t: int, tp: int) -> Tensor:
        a_t, a_p = schedule.alpha_bar(t, xt), schedule.alpha_bar(tp, xt)
        x0 = (xt - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if clips:  # clip the clean estimate and re-derive ε from it
            x0 = x0.clamp(-clip_x0, clip_x0) if clip_x0 is not None else x0
            x0 = dynamic_threshold(x0, threshold) if threshold is not None else x0
            eps = (xt - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        noise = None
        if eta > 0:
            noise = torch.randn(xt.shape, generator=generator, dtype=xt.dtype, device="cpu").to(xt.device)
        return ddim_update(xt, eps, x0, a_t, a_p, eta, noise)

    from tqdm import tqdm

    ets: list[Tensor] = []
    pairs = list(zip(grid[:-1], grid[1:], strict=True))
    for i, (t, tp) in enumerate(tqdm(pairs, desc=method, disable=not progress, leave=False)):
        eps = eps_of(x, t)
        if method == "ddim":
            x = step(x, eps, t, tp)
            continue
        if i == 0 and tp >= 0:  # PNDM's first step: average ε at both ends of the step (a Heun step)
            ets.append(eps)
            e1 = eps_of(step(x, eps, t, tp), tp)
            x = step(x, (eps + e1) / 2, t, tp)
            continue
        ets = (ets + [eps])[-4:]
        x = step(x, _plms_eps(ets), t, tp)
    return x, calls


def sample(fn: Denoiser, shape: tuple[int, ...], schedule: NoiseSchedule, steps: int = 50, method: str = "ddim",
           eta: float = 0.0, generator: torch.Generator | None = None, device="cpu", x_T: Tensor | None = None,
           clip_x0: float | None = None, progress: bool = False) -> Tensor:  # fmt: skip
    """Draw samples from pure noise in ``steps`` steps on diffusers' leading grid."""
    if x_T is None:
        x_T = torch.randn(shape, generator=generator).to(device)
    return sample_grid(fn, x_T, schedule.grid(steps), schedule, method, eta, generator, clip_x0, progress)[0]


def multistep_steps(t: float, max_steps: int = 50) -> int:
    """min(⌊100 t⌋, max_steps), at least 1: SparseFusion's step count for denoising from continuous time t
    (official ``max_steps`` 50)."""
    return max(min(int(t * 100), max_steps), 1)


def multistep_denoise(fn: Denoiser, x0: Tensor, t: float, schedule: NoiseSchedule, noise: Tensor | None = None,
                      method: str = "plms", generator: torch.Generator | None = None,
                      clip_x0: float | None = None, max_steps: int = 50,
                      eta: float = 0.0) -> tuple[Tensor, dict]:  # fmt: skip
    """Noise the clean latent ``x0`` to continuous time ``t`` ∈ (0, 1) and denoise it back to 0 in
    :func:`multistep_steps` steps (SparseFusion's distillation target). Returns (x̂0, info). The official
    sampler is ``eta=1, clip_x0=10`` (stochastic posterior steps); ``eta=0`` makes the target deterministic
    given the noise."""
    if not 0 < t < 1:
        raise ValueError(f"t must lie in (0, 1), got {t}")
    t_idx = schedule.continuous_to_index(t)
    n = multistep_steps(t, max_steps)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator).to(x0)
    x_t = schedule.add_noise(x0, noise, torch.full((x0.shape[0],), t_idx, dtype=torch.long))
    grid = schedule.partial_grid(t_idx, n)
    out, calls = sample_grid(fn, x_t, grid, schedule, method, eta, generator, clip_x0)
    info = {
        "t_index": t_idx,
        "steps": len(grid) - 1,
        "model_calls": calls,
        "alpha_bar": float(schedule.alpha_bar(t_idx, x0).flatten()[0]),
    }
    return out, info


def sds_residual(fn: Denoiser, x0: Tensor, t: int, schedule: NoiseSchedule, noise: Tensor | None = None,
                 weighting: str = "sds", generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """Score-distillation residual w(t)·(ε̂(x_t, t) − ε) for latents ``x0`` (no gradient through the denoiser).

    ``weighting``: ``sds`` (DreamFusion, 1 − ᾱ_t), ``ipsm`` (IPSM's code, ᾱ_t) or ``none`` (1)."""
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator).to(x0)
    tt = torch.full((x0.shape[0],), int(t), dtype=torch.long)
    with torch.no_grad():
        x_t = schedule.add_noise(x0.detach(), noise, tt)
        eps_hat, _ = schedule.eps_x0(fn(x_t, int(t)), x_t, int(t))
    a = schedule.alpha_bar(int(t), x0)
    w = {"sds": 1 - a, "ipsm": a, "none": torch.ones_like(a)}.get(weighting)
    if w is None:
        raise ValueError(f"unknown SDS weighting {weighting!r}: choose sds, ipsm or none")
    return w * (eps_hat - noise)


def sds_loss(x0: Tensor, residual: Tensor, reduction: str = "sum") -> Tensor:
    """0.5‖x0 − sg(x0 − residual)‖²: its gradient w.r.t. ``x0`` is the residual itself (``sum``) or the
    residual / numel (``mean``, as IPSM's code reduces)."""
    target = (x0 - residual).detach()
    return 0.5 * F.mse_loss(x0, target, reduction=reduction)
