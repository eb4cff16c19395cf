"""The discrete DDPM noise schedule (diffusers' ``DDPMScheduler``) and conversions between the ε-, v- and
x0-parameterisations of a denoiser's output."""

from __future__ import annotations

import math

import torch
from torch import Tensor

PREDICTIONS = ("epsilon", "v_prediction", "sample")


class NoiseSchedule:
    """``num_train_timesteps`` discrete steps; ``beta_schedule`` as diffusers names it (Stable Diffusion:
    ``scaled_linear`` from 0.00085 to 0.012). Timestep ``-1`` means clean (ᾱ = 1)."""

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "scaled_linear",
                 beta_start: float = 0.00085, beta_end: float = 0.012, prediction_type: str = "epsilon"):  # fmt: skip
        from diffusers import DDPMScheduler

        if prediction_type not in PREDICTIONS:
            raise ValueError(f"prediction type {prediction_type!r}: choose one of {PREDICTIONS}")
        self.ddpm = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                  beta_start=beta_start, beta_end=beta_end, prediction_type=prediction_type,
                                  clip_sample=False)  # fmt: skip
        self.T = num_train_timesteps
        self.prediction_type = prediction_type
        # index 0 holds the clean level, so timestep t lives at t + 1
        self._abar = torch.cat([torch.ones(1, dtype=torch.float64), self.ddpm.alphas_cumprod.double()])

    def alpha_bar(self, t: Tensor | int, like: Tensor) -> Tensor:
        """ᾱ_t broadcast to ``like`` (B, ...) for integer timesteps ``t`` (scalar or (B,)); -1 gives 1."""
        t = torch.as_tensor(t, device="cpu").long().reshape(-1)
        a = self._abar[t + 1].to(device=like.device, dtype=like.dtype)
        return a.reshape(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return self.ddpm.add_noise(x0, noise, t.to(x0.device))

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the denoiser is trained to output at timesteps ``t``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        return self.ddpm.get_velocity(x0, noise, t.to(x0.device))

    def eps_x0(self, out: Tensor, x_t: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """(ε, x0) implied by the denoiser output ``out`` at ``x_t``: each is affine in ``out``."""
        a = self.alpha_bar(t, x_t)
        sa, s1 = a.sqrt(), (1 - a).sqrt()
        if self.prediction_type == "epsilon":
            return out, (x_t - s1 * out) / sa
        if self.prediction_type == "sample":
            return (x_t - sa * out) / s1.clamp_min(1e-12), out
        return sa * out + s1 * x_t, sa * x_t - s1 * out  # v = √ᾱ ε − √(1−ᾱ) x0

    def continuous_to_index(self, t: float) -> int:
        """Discrete timestep for continuous time t ∈ (0, 1]: step i holds time (i + 1) / T (diffusers' betas are
        built so), so the nearest is round(t·T) − 1."""
        return min(max(round(t * self.T) - 1, 0), self.T - 1)

    def diffusers_scheduler(self, kind: str):
        """A diffusers DDIM or PNDM (PLMS) scheduler on this schedule, taking ε and ending at ᾱ = 1."""
        from diffusers import DDIMScheduler, PNDMScheduler

        cfg = dict(self.ddpm.config)
        cfg.update(prediction_type="epsilon", set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
        if kind == "ddim":
            return DDIMScheduler.from_config(cfg)
        if kind == "plms":
            return PNDMScheduler.from_config({**cfg, "skip_prk_steps": True})
        raise ValueError(f"unknown scheduler {kind!r}: choose ddim or plms")

    def grid(self, steps: int) -> list[int]:
        """The ``steps`` leading-spaced timesteps diffusers' DDIM and PLMS sample with, plus -1 (clean)."""
        sch = self.diffusers_scheduler("ddim")
        sch.set_timesteps(steps)
        return [int(t) for t in sch.timesteps] + [-1]

    def partial_grid(self, t_start: int, steps: int) -> list[int]:
        """``steps`` evenly spaced timesteps from ``t_start`` down, plus -1: the path of the multi-step denoiser."""
        steps = max(int(steps), 1)
        return [round(t_start * (1 - k / steps)) for k in range(steps)] + [-1]


def cosine_alpha_bar(t, s: float = 0.008):
    """ᾱ(t) = cos²((t + s)/(1 + s)·π/2) of the continuous-time cosine schedule (Nichol & Dhariwal; SparseFusion's
    VLDM through imagen-pytorch's log-SNR form, log SNR = −log(cos⁻²(·) − 1)). ``beta_schedule="squaredcos_cap_v2"``
    is its discretisation: step i has ᾱ((i + 1)/T) / ᾱ(0)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
