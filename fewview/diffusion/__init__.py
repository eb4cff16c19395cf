"""Diffusion core: an image VAE, conditional latent diffusion (concat and cross-attention conditioning,
ε/v/x0 prediction, classifier-free guidance), DDIM/PLMS samplers on any timestep grid, the multi-step
denoiser and score-distillation helpers, and the inpainting prior. diffusers provides the networks and
the noise schedule; it is imported when a model is built."""

from .ldm import InpaintConfig, InpaintingLDM, LatentDiffusion, LDMConfig
from .masks import (
    blurred_fill,
    box_mask,
    half_mask,
    inverse_warp,
    mean_fill,
    nearest_fill,
    training_masks,
    warp_mask,
    white_fill,
)
from .samplers import (
    classifier_free_guidance,
    ddim_update,
    multistep_denoise,
    multistep_steps,
    sample,
    sample_grid,
    sds_loss,
    sds_residual,
)
from .schedule import NoiseSchedule
from .vae import ImageVAE, VAEConfig

__all__ = [
    "ImageVAE",
    "InpaintConfig",
    "InpaintingLDM",
    "LDMConfig",
    "LatentDiffusion",
    "NoiseSchedule",
    "VAEConfig",
    "blurred_fill",
    "box_mask",
    "classifier_free_guidance",
    "ddim_update",
    "half_mask",
    "inverse_warp",
    "mean_fill",
    "nearest_fill",
    "multistep_denoise",
    "multistep_steps",
    "sample",
    "sample_grid",
    "sds_loss",
    "sds_residual",
    "training_masks",
    "warp_mask",
    "white_fill",
]
