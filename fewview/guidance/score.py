"""Score distillation through a latent diffusion prior, as named loss terms.

Every term has the form ``w · 0.5·mean((z − sg(z − g))²)``: its gradient with respect to the latent ``z``
is ``w · g / numel(z)``, where ``g`` is a weighted score difference (IPSM's code reduces with the mean; SDS
uses the same reduction here so that the weights of both compare). Renders reach ``z`` through the VAE's
encoder, so the gradient flows into whatever rendered the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..diffusion.samplers import sds_loss

WEIGHTINGS = ("sds", "ipsm", "none")


@dataclass
class ScorePrior:
    """A latent diffusion model with one condition: ``eps(x_t, t)`` with classifier-free guidance."""

    model: object  # LatentDiffusion (or InpaintingLDM)
    cond: dict | None = None
    guidance: float = 1.0

    def eps(self, x_t: Tensor, t: int) -> Tensor:
        with torch.no_grad():
            out = self.model.predict(x_t, t, self.cond, self.guidance)
            return self.model.schedule.eps_x0(out, x_t, t)[0]


def inpaint_prior(model, image: Tensor, unknown: Tensor, guidance: float = 1.0) -> ScorePrior:
    """The inpainting model conditioned on ``image`` (B,3,H,W) with ``unknown`` (B,1,H,W) pixels to generate;
    ``unknown`` all ones gives its plain prior (what it generates when it sees nothing)."""
    with torch.no_grad():
        return ScorePrior(model, model.inpaint_condition(image, unknown.to(image)), guidance)


def weight(schedule, t: int, like: Tensor, weighting: str) -> Tensor:
    a = schedule.alpha_bar(int(t), like)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}: choose one of {WEIGHTINGS}")
    return {"sds": 1 - a, "ipsm": a, "none": torch.ones_like(a)}[weighting]


def noisy(schedule, z: Tensor, t: int, noise: Tensor) -> Tensor:
    tt = torch.full((z.shape[0],), int(t), dtype=torch.long)
    return schedule.add_noise(z.detach(), noise, tt)


def sds_terms(prior: ScorePrior, z: Tensor, t: int, noise: Tensor, weighting: str = "sds",
              scale: float = 1.0, name: str = "sds") -> dict[str, Tensor]:  # fmt: skip
    """DreamFusion's SDS on latents ``z``: g = w(t)·(ε̂(z_t, t) − ε)."""
    sched = prior.model.schedule
    g = weight(sched, t, z, weighting) * (prior.eps(noisy(sched, z, t, noise), t) - noise)
    return {name: scale * sds_loss(z, g, reduction="mean")}


def ipsm_terms(rectified: ScorePrior, plain: ScorePrior, z: Tensor, t: int, noise: Tensor,
               w_rectified: float = 0.2, w_difference: float = 2.0,
               weighting: str = "ipsm") -> dict[str, Tensor]:  # fmt: skip
    """IPSM's two terms at one (t, ε): the rectified distribution's score against the noise,
    g₁ = w(t)·(ε_rect − ε), and against the plain prior's score, g₂ = w(t)·(ε_rect − ε_plain).
    ``weighting="ipsm"`` is the official code's w(t) = ᾱ_t; ``"sds"`` the paper's 1 − ᾱ_t."""
    sched = rectified.model.schedule
    x_t = noisy(sched, z, t, noise)
    e_rect, e_plain = rectified.eps(x_t, t), plain.eps(x_t, t)
    w = weight(sched, t, z, weighting)
    return {
        "ipsm_rectified": w_rectified * sds_loss(z, w * (e_rect - noise), reduction="mean"),
        "ipsm_difference": w_difference * sds_loss(z, w * (e_rect - e_plain), reduction="mean"),
    }


def to_prior_size(x: Tensor, size: int, mode: str = "bilinear") -> Tensor:
    """Resize (B,C,H,W) to the prior's square size, ignoring the aspect ratio as IPSM's code does."""
    if x.shape[-2:] == (size, size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False)


def multistep_terms(model, render: Tensor, cond: dict | None, t: float, noise: Tensor | None = None,
                    perceptual=None, w_perceptual: float = 0.1, method: str = "plms",
                    generator: torch.Generator | None = None,
                    timings: dict | None = None, max_steps: int = 50, eta: float = 0.0,
                    clip_x0: float | None = None, guidance: float = 1.0) -> dict[str, Tensor]:  # fmt: skip
    """SparseFusion's multi-step distillation loss for ``render`` (B,3,H,W) in [0, 1]: encode it, noise the latent
    to continuous time ``t`` on the model's own schedule, denoise back in min(⌊100t⌋, max_steps) steps, decode x̂0 and
    compare: (1 − ᾱ_t)·L1(render, sg(x̂0)) and ``w_perceptual``·perceptual(render, sg(x̂0)) (LPIPS). ``eta`` and
    ``clip_x0`` shape the sampler (the official one: 1 and 10); its step noise comes from ``generator``;
    ``guidance`` is the denoiser's classifier-free guidance (the official: 1, none)."""
    clock = PhaseClock(timings)
    with torch.no_grad():
        z = clock("encode", model.vae.encode, render.detach())
        z0, info = clock("denoise", model.multistep_denoise, z, t, cond, noise=noise, generator=generator,
                         method=method, guidance=guidance, max_steps=max_steps, eta=eta,
                         clip_x0=clip_x0)  # fmt: skip
        target = clock("decode", model.vae.decode, z0).clamp(0, 1)
    w = 1 - info["alpha_bar"]
    terms = {"multistep_l1": w * (render - target).abs().mean()}
    if perceptual is not None and w_perceptual > 0:
        terms["multistep_perceptual"] = w_perceptual * perceptual(render, target)
    return terms


class PhaseClock:
    """Calls a function and adds its wall time to ``timings[name]`` (when a dict is given). On CUDA it synchronises
    before and after, so a phase is charged the kernels it launched, not only their launch."""

    def __init__(self, timings: dict | None):
        self.timings = timings

    def __call__(self, name: str, fn, *args, **kw):
        import time

        if self.timings is None:
            return fn(*args, **kw)
        _sync()
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        _sync()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
        return out


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
