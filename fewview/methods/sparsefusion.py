"""SparseFusion (Zhou & Tulsiani, CVPR 2023): a view-conditioned latent diffusion model (VLDM, conditioned on
the EFT's features) distilled into a per-scene radiance field.

The pipeline:

1. **Distillation path.** ``sf_path_cameras`` cameras on an orbit of the input cameras
   (:func:`~fewview.cameras.input_orbit`, from 2 views or even 1) with ±``sf_jitter`` rad of out-of-plane jitter.
   ``sf_path="official"`` reproduces the official code: the circle fitted to *all* the scene's cameras, plus
   those cameras themselves. That reads the evaluation poses (not their images), so it leaks; it exists to
   reproduce the paper's numbers.
2. **EFT cache.** For every path camera, the VLDM's condition (the EFT feature grid at the latent resolution)
   and the EFT's colour (upsampled from that grid, as the official code upsamples 32² to 256²), computed once.
3. **Input views**, every step: the field fit's colour loss on rays of the input views (with the sparse
   preset's silhouette and regularisers), plus an opacity regulariser.
4. **EFT bootstrap**, the first ``sf_bootstrap`` of the steps: ``sf_bootstrap_rays`` random pixels of a random path
   camera are rendered and pulled towards the cached EFT colour (Huber, δ = 0.1) and its silhouette (EFT colour
   off the background). The official code renders whole images; the EFT colour is upsampled from the latent grid.
5. **Multi-step distillation**, afterwards: t ~ U(0, ``sf_t_max``) on the VLDM's own (cosine) schedule; the
   render is encoded, noised to t, denoised back in min(⌊100t⌋, ``sf_max_denoise_steps``) PLMS steps (the
   paper's cap: 50; fewview's default: 10, chosen on validation objects) and decoded to x̂0; the loss is
   (1 − ᾱ_t)·L1(render, x̂0) + ``sf_w_perceptual``·LPIPS(render, x̂0). The PLMS steps are deterministic;
   ``sf_denoise_eta=1, sf_clip_x0=10`` is the official stochastic sampler (behind on validation objects).

``sf_objective`` gives the paper's Table 5 rows on the same models: ``eft`` (EFT + field: the bootstrap for all
steps), ``samples`` (VLDM + field: one DDIM sample per path camera, fitted the same way), ``sds`` (SDS with the
VLDM, DreamFusion's weighting, guidance ``sf_sds_guidance``) and ``multistep`` (SparseFusion).

The VLDM and its EFT are loaded once and never written into the scene's checkpoint. Renders for the prior are
made at the VLDM's image size (64² for the shipped model).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as option
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras, camera_rays, input_orbit, sparsefusion_trajectory
from ..data import Scene
from ..guidance import PhaseClock, multistep_terms
from .fit import Fitter
from .fit_config import SPARSE_PRESET, FitConfig
from .runs import training_images

PATHS = ("inputs", "official")
OBJECTIVES = ("multistep", "sds", "eft", "samples")


@dataclass
class SparseFusionOptions:
    sf_model: str = option(
        default="vldm-v", metadata={"help": "VLDM: shipped vldm-v (v-prediction), vldm (ε-prediction) or a folder"}
    )
    sf_path: str = option(default="inputs", metadata={"help": "inputs | official (fits all scene cameras: leaks)"})
    sf_path_cameras: int = option(default=50, metadata={"help": "cameras on the distillation orbit"})
    sf_jitter: float = option(default=0.17, metadata={"help": "out-of-plane jitter of the orbit, radians"})
    sf_bootstrap: float = option(default=1 / 3, metadata={"help": "fraction of steps on the EFT's renders"})
    sf_bootstrap_rays: int = option(default=1024, metadata={
        "help": "random pixels of the path camera rendered per bootstrap step (0: the whole image)"})
    sf_huber: float = option(default=0.1, metadata={"help": "Huber δ of the colour losses"})
    sf_w_novel: float = option(default=1.0, metadata={"help": "weight of the novel-view step"})
    sf_w_perceptual: float = option(default=0.1, metadata={"help": "LPIPS weight of the distillation loss"})
    sf_w_opacity_reg: float = option(default=1e-3, metadata={"help": "mean sqrt(w^2 + 0.01) of the ray weights"})
    sf_t_max: float = option(default=0.99, metadata={"help": "largest continuous t drawn"})
    sf_max_denoise_steps: int = option(default=10, metadata={
        "help": "cap of the min(⌊100t⌋, cap) PLMS steps (paper: 50)"})  # fmt: skip
    sf_guidance: float = option(default=1.0, metadata={"help": "classifier-free guidance (official: 1, none)"})
    sf_denoise_eta: float = option(default=0.0, metadata={
        "help": "stochasticity of the denoising steps (official: 1, DDPM posterior steps; 0: deterministic)"})
    sf_clip_x0: float = option(default=0.0, metadata={
        "help": "clip the denoiser's clean latent estimate to ±this (official: 10; 0: no clip)"})
    sf_eft_mask: float = option(default=0.1, metadata={"help": "EFT colour this far from the background = object"})
    sf_objective: str = option(default="multistep", metadata={
        "help": "multistep (SparseFusion) | sds (SDS with the VLDM) | eft (EFT + field) | samples (VLDM + field)"})
    sf_sds_guidance: float = option(default=3.0, metadata={"help": "classifier-free guidance of the SDS baseline"})
    sf_sample_steps: int = option(default=50, metadata={"help": "DDIM steps of the samples (objective samples)"})


@dataclass
class SparseFusionConfig(FitConfig, SparseFusionOptions):
    """The field fit's options (defaults: ``SPARSE_PRESET``) and SparseFusion's."""

    steps: int = option(default=1500, metadata={"help": "optimisation steps"})
    upsample_step: int = option(default=500, metadata={"help": "grid upsampling step"})
    grid_res: int = option(default=SPARSE_PRESET["grid_res"], metadata={"help": "initial grid resolution"})
    grid_res_final: int = option(default=SPARSE_PRESET["grid_res_final"], metadata={"help": "final grid"})
    w_rgb_per_sample: float = option(default=SPARSE_PRESET["w_rgb_per_sample"], metadata={"help": "per-sample rgb"})
    w_entropy: float = option(default=SPARSE_PRESET["w_entropy"], metadata={"help": "opacity entropy"})
    w_silhouette: float = option(default=SPARSE_PRESET["w_silhouette"], metadata={"help": "mask loss"})
    w_tv: float = option(default=SPARSE_PRESET["w_tv"], metadata={"help": "total variation"})
    # Half the sparse preset's input rays and a third of its samples per ray (with a cap of 10 PLMS steps and 1024
    # bootstrap pixels): level on the 3 validation objects with the paper's cap and whole-image bootstrap in about
    # half the time (benchmarks/results/sparsefusion_cap_val_cpu2.json, sparsefusion_fast_val_cpu2.json, docs).
    batch_rays: int = option(default=2048, metadata={"help": "input-view rays per step"})
    step_voxels: float = option(default=1.5, metadata={"help": "march step in voxels of the final grid"})
    method: str = option(default="sparsefusion", metadata={"help": "the method this config runs"})


def distillation_path(scene: Scene, inputs: list[int], cfg: SparseFusionConfig, generator) -> Cameras:
    """The cameras of step 1. Only ``"official"`` reads cameras other than the inputs'."""
    if cfg.sf_path not in PATHS:
        raise ValueError(f"sf_path {cfg.sf_path!r}: choose one of {PATHS}")
    if cfg.sf_path == "inputs":
        return input_orbit(scene.cameras[inputs], cfg.sf_path_cameras, elevation_jitter=cfg.sf_jitter,
                           generator=generator)  # fmt: skip
    orbit = sparsefusion_trajectory(scene.cameras, cfg.sf_path_cameras, cfg.sf_jitter, generator)
    every = scene.cameras.resize(int(orbit.size[0, 0]), int(orbit.size[0, 1]))
    return Cameras.cat([orbit.to(torch.float32), every.to(torch.float32)])


class SparseFusionFitter(Fitter):
    """:class:`Fitter` plus SparseFusion's EFT bootstrap and multi-step distillation on the orbit's cameras."""

    def __init__(self, scene: Scene, inputs: list[int], cfg: SparseFusionConfig, run_dir: str | Path | None = None):
        if cfg.sf_objective not in OBJECTIVES:
            raise ValueError(f"sf_objective {cfg.sf_objective!r}: choose one of {OBJECTIVES}")
        super().__init__(scene, inputs, cfg, run_dir)
        from ..pretrained import from_pretrained, resolve_model_dir

        self.vldm = from_pretrained(resolve_model_dir(cfg.sf_model), self.device).eval().requires_grad_(False)
        size = int(self.vldm.config.latent_size * self.vldm.vae.downsample)
        g = torch.Generator().manual_seed(cfg.seed + 2)
        self.path = distillation_path(scene, self.inputs, cfg, g).resize(size, size).to(torch.float32)
        self.size = size
        self.timings: dict[str, float] = {}  # seconds per phase, summed over this process's steps
        self.clock("cache", self.cache_eft)

    @property
    def clock(self) -> PhaseClock:
        """Adds each phase's seconds to ``self.timings``, whichever dict it holds now."""
        return PhaseClock(self.timings)

    # ---------------------------------------------------------------- EFT cache
    @torch.no_grad()
    def cache_eft(self) -> None:
        bg = self.state.background.view(3, 1, 1).cpu()
        ctx = F.interpolate(training_images(self.train, bg.flatten()).float(), size=(self.size, self.size), mode="area")
        ctx_cams = self.train.cameras.resize(self.size, self.size)
        self.cond, self.eft_rgb = [], []
        for i in range(len(self.path)):
            cond, rgb = self.vldm.condition(ctx, ctx_cams, self.path[i])
            self.cond.append(cond["concat"])
            self.eft_rgb.append(F.interpolate(rgb, size=(self.size, self.size), mode="bilinear")[0])
        self.eft_rgb = torch.stack(self.eft_rgb)
        if self.cfg.sf_objective == "samples":  # the "VLDM + field" baseline fits one sample per path camera
            g = torch.Generator().manual_seed(self.cfg.seed + 3)
            self.eft_rgb = torch.cat([self.vldm.vae.decode(self.vldm.sample_latents(
                {"concat": c}, 1, self.cfg.sf_sample_steps, "ddim", 0.0, self.cfg.sf_guidance, g)).clamp(0, 1)
                for c in self.cond])  # fmt: skip
        off = (self.eft_rgb - bg.to(self.eft_rgb.device)).abs().mean(1, keepdim=True)
        self.eft_mask = (off > self.cfg.sf_eft_mask).float()

    # ------------------------------------------------------------------ novel
    def render_path(self, i: int, pixels: Tensor | None = None):
        """Render (with gradient) of path camera ``i`` at the VLDM's size: (rgb (1,3,S,S), opacity (1,1,S,S), out);
        with ``pixels`` (flat indices) only those: (rgb (3,P), opacity (1,P), out)."""
        rays = camera_rays(self.path[i], dtype=torch.float32)
        o, d = rays.origins.reshape(-1, 3), rays.directions.reshape(-1, 3)
        if pixels is not None:
            o, d = o[pixels], d[pixels]
        out = self.state.render_rays(o.to(self.device), d.to(self.device), perturb=True, generator=self.gen)
        if pixels is not None:
            return out.rgb.T, out.opacity.reshape(1, -1), out
        s = self.size
        return out.rgb.reshape(1, s, s, 3).permute(0, 3, 1, 2), out.opacity.reshape(1, 1, s, s), out

    def bootstrap_terms(self, i: int) -> dict[str, Tensor]:
        """Huber to the cached EFT colour and silhouette of path camera ``i``: the whole image, or (a per-pixel loss,
        so an unbiased estimate of it) ``sf_bootstrap_rays`` random pixels; the EFT colour is upsampled from the
        latent grid, so a few pixels per latent cell carry all it holds."""
        c, n = self.cfg, self.size * self.size
        pixels = None
        if 0 < c.sf_bootstrap_rays < n:
            pixels = torch.randperm(n, generator=self.gen)[: c.sf_bootstrap_rays]
        rgb, opacity, _ = self.clock("render", self.render_path, i, pixels)
        eft_rgb, eft_mask = self.eft_rgb[i].flatten(1), self.eft_mask[i].flatten(1)  # (3, S²), (1, S²)
        if pixels is None:
            rgb, opacity = rgb[0].flatten(1), opacity[0].flatten(1)
        else:
            eft_rgb, eft_mask = eft_rgb[:, pixels], eft_mask[:, pixels]
        return {"eft_colour": F.huber_loss(rgb, eft_rgb, delta=c.sf_huber),
                "eft_silhouette": F.huber_loss(opacity, eft_mask, delta=c.sf_huber)}  # fmt: skip

    def novel_terms(self) -> dict[str, Tensor]:
        c = self.cfg
        i = int(torch.randint(0, len(self.path), (1,), generator=self.gen))
        if self.step < int(c.sf_bootstrap * c.steps) or c.sf_objective in ("eft", "samples"):
            return self.bootstrap_terms(i)
        rgb, opacity, _ = self.clock("render", self.render_path, i)
        if c.sf_objective == "sds":
            from ..guidance import ScorePrior, sds_terms

            z = self.vldm.vae.encode(rgb)
            t = int(torch.randint(20, int(0.98 * self.vldm.schedule.T), (1,), generator=self.gen))
            noise = torch.randn(z.shape, generator=self.gen).to(z)
            prior = ScorePrior(self.vldm, {"concat": self.cond[i]}, c.sf_sds_guidance)
            return sds_terms(prior, z, t, noise, "sds", 1.0)
        t = float(torch.rand(1, generator=self.gen)) * c.sf_t_max
        t = min(max(t, 1.0 / self.vldm.schedule.T), c.sf_t_max)
        noise = torch.randn(1, self.vldm.config.latent_channels, *self.cond[i].shape[-2:], generator=self.gen)
        perceptual = self.perceptual if c.sf_w_perceptual > 0 else None
        return multistep_terms(self.vldm, rgb, {"concat": self.cond[i]}, t, noise.to(rgb), perceptual,
                               c.sf_w_perceptual, generator=self.gen, timings=self.timings,
                               max_steps=c.sf_max_denoise_steps, eta=c.sf_denoise_eta,
                               clip_x0=c.sf_clip_x0 or None, guidance=c.sf_guidance)  # fmt: skip

    def losses(self, idx: Tensor):
        c = self.cfg
        loss, terms, out = super().losses(idx)
        if c.sf_w_opacity_reg > 0:
            reg = torch.sqrt(out.weights**2 + 0.01).mean()
            loss = loss + c.sf_w_opacity_reg * reg
            terms["opacity_reg"] = float(reg.detach())
        if c.sf_w_novel > 0:
            for name, value in self.novel_terms().items():
                loss = loss + c.sf_w_novel * value
                terms[name] = float(value.detach())
        return loss, terms, out

    def train_step(self) -> dict[str, float]:
        """One step; ``timings["step"]`` sums whole steps, so the input-view losses, backward and update are step −
        the named phases (``render`` times the novel view only)."""
        return self.clock("step", super().train_step)

    def run(self, progress: bool = True, callback=None):
        from .runs import fit_loop

        def postfix(terms, n, sec):
            shown = {"psnr": f"{terms['psnr']:.2f}"}
            for k in ("eft_colour", "multistep_l1", "multistep_perceptual"):
                if k in terms:
                    shown[k] = f"{terms[k]:.3f}"
            return shown

        return fit_loop(self, "fit sparsefusion", postfix, progress, callback)
