"""Image VAE: diffusers' ``AutoencoderKL`` (KL-regularised, as Stable Diffusion's) trained on fewview-objects.

Images are in [0, 1] at the interface; latents are scaled by ``scale_factor`` = 1 / std of the unscaled
latents over training images, computed from data after training the way Stable Diffusion's 0.18215 was,
so that scaled latents have unit variance for the diffusion models that use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as option
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..pretrained import register_model


@dataclass
class VAEConfig:
    image_size: int = option(default=64, metadata={"help": "training image size (the VAE is convolutional)"})
    latent_channels: int = option(default=4, metadata={"help": "latent channels"})
    block_out_channels: tuple[int, ...] = option(
        default=(32, 64, 128), metadata={"help": "widths per level; the latent is image_size / 2^(levels-1)"}
    )
    layers_per_block: int = option(default=1, metadata={"help": "resnet blocks per level"})
    norm_num_groups: int = option(default=16, metadata={"help": "GroupNorm groups"})
    mid_attention: bool = option(default=True, metadata={"help": "self-attention in the middle block"})
    kl_weight: float = option(
        default=1e-6, metadata={"help": "KL weight against the per-image summed squared error (Stable Diffusion: 1e-6)"}
    )
    init_logvar: float = option(
        default=-8.0,
        metadata={"help": "initial posterior log-variance (a unit-variance start buries the latent in noise)"},
    )
    train_encoder: bool = option(
        default=True, metadata={"help": "train the encoder too; off: decoder-only fine-tuning, the latents stay fixed"}
    )
    l2_weight: float = option(default=1.0, metadata={"help": "squared-error weight (the PSNR objective)"})
    l1_weight: float = option(default=1.0, metadata={"help": "L1 weight"})
    foreground_weight: float = option(
        default=4.0, metadata={"help": "extra weight of object pixels (the mask) in the reconstruction terms"}
    )
    chroma_weight: float = option(
        default=10.0,
        metadata={
            "help": "L1 weight on chroma (colour minus its grey level): colour is a small residual "
            "on white-background renders and is otherwise learned last"
        },  # fmt: skip
    )
    lpips_weight: float = option(default=0.0, metadata={"help": "LPIPS perceptual weight (needs LPIPS weights)"})
    lpips_weights: str = option(default="", metadata={"help": "LPIPS weights file (default: the cache)"})


def reconstruction_terms(y: Tensor, x: Tensor, mask: Tensor | None, foreground_weight: float) -> dict[str, Tensor]:
    """Weighted L2, L1 and chroma-L1 (the error minus its grey level) between images ``y`` and ``x``; object
    pixels (``mask``) weigh ``1 + foreground_weight``, normalised so the weights average 1."""
    w = torch.ones_like(x[:, :1]) if mask is None else 1 + foreground_weight * mask
    w = w / w.mean()
    d = y - x
    return {"l2": (w * d.square()).mean(), "l1": (w * d.abs()).mean(),
            "chroma": (w * (d - d.mean(1, keepdim=True)).abs()).mean()}  # fmt: skip


@register_model("vae", VAEConfig)
class ImageVAE(nn.Module):
    """``encode`` images in [0, 1] to scaled latents; ``decode`` scaled latents to images in [0, 1]."""

    def __init__(self, config: VAEConfig | None = None, autoencoder: nn.Module | None = None):
        super().__init__()
        self.config = c = config or VAEConfig()
        if autoencoder is None:
            from diffusers import AutoencoderKL

            levels = len(c.block_out_channels)
            autoencoder = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=c.latent_channels,
                down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                block_out_channels=tuple(c.block_out_channels), layers_per_block=c.layers_per_block,
                norm_num_groups=c.norm_num_groups, sample_size=c.image_size, mid_block_add_attention=c.mid_attention,
            )  # fmt: skip
            lc = c.latent_channels
            with torch.no_grad():  # the posterior starts nearly deterministic, so the latent carries information
                autoencoder.quant_conv.weight[lc:].zero_()
                autoencoder.quant_conv.bias[lc:].fill_(c.init_logvar)
        self.autoencoder = autoencoder
        # decoder-only fine-tuning, as Stable Diffusion's ft-MSE decoders were made: models on the latents stay valid
        if not c.train_encoder:
            for m in (autoencoder.encoder, autoencoder.quant_conv):
                m.requires_grad_(False)
        self.register_buffer("scale_factor", torch.tensor(1.0))
        self._perceptual = None
        if c.lpips_weight > 0:
            from ..metrics.lpips import PerceptualLoss

            self._perceptual = PerceptualLoss("alex", c.lpips_weights or None)

    @classmethod
    def from_diffusers(cls, folder: str | Path, scale_factor: float | None = None) -> ImageVAE:
        """Wrap a diffusers ``AutoencoderKL`` folder (e.g. Stable Diffusion's ``vae/``); its
        ``scaling_factor`` (0.18215 for SD 1.x) is used unless ``scale_factor`` is given."""
        from diffusers import AutoencoderKL

        ae = AutoencoderKL.from_pretrained(str(folder))
        cfg = VAEConfig(
            image_size=ae.config.sample_size, latent_channels=ae.config.latent_channels,
            block_out_channels=tuple(ae.config.block_out_channels), layers_per_block=ae.config.layers_per_block,
            norm_num_groups=ae.config.norm_num_groups,
        )  # fmt: skip
        vae = cls(cfg, autoencoder=ae)
        vae.scale_factor.fill_(scale_factor if scale_factor is not None else ae.config.scaling_factor)
        return vae.eval()

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.autoencoder.config.block_out_channels) - 1)

    def posterior(self, images: Tensor):
        return self.autoencoder.encode(images * 2 - 1).latent_dist

    def encode(self, images: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents (B, C, H/f, W/f) of images (B, 3, H, W) in [0, 1]: the posterior mode, or a sample."""
        dist = self.posterior(images)
        z = dist.sample(generator) if sample else dist.mode()
        return z * self.scale_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Images in [0, 1] (unclamped) from scaled latents."""
        return (self.autoencoder.decode(latents / self.scale_factor).sample + 1) / 2

    def reconstruct(self, images: Tensor) -> Tensor:
        return self.decode(self.encode(images)).clamp(0, 1)

    def forward(self, batch) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        x = batch.query
        dist = self.posterior(x)
        gens = batch.item_generators() if batch.item_seeds is not None else [None] * x.shape[0]
        eps = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in gens]).to(dist.mean)
        z = dist.mean + dist.std * eps if c.train_encoder else dist.mode()
        y = (self.autoencoder.decode(z).sample + 1) / 2
        r = reconstruction_terms(y, x, batch.query_mask, c.foreground_weight)
        kl = dist.kl().mean()
        # Reconstruction terms are per-pixel means; Stable Diffusion weighs the per-image KL against per-image
        # sums, so the KL is divided by the values per image to keep its 1e-6 meaning.
        loss = c.l2_weight * r["l2"] + c.l1_weight * r["l1"] + c.chroma_weight * r["chroma"]
        loss = loss + c.kl_weight * kl / x[0].numel()
        psnr = -10 * torch.log10(F.mse_loss(y.detach(), x).clamp_min(1e-10))
        logs = {"psnr": float(psnr), "kl": float(kl.detach()), "chroma": float(r["chroma"].detach())}
        if self._perceptual is not None:
            lp = self._perceptual(y.clamp(0, 1), x)
            loss = loss + c.lpips_weight * lp
            logs["lpips"] = float(lp.detach())
        return loss, logs

    @torch.no_grad()
    def calibrate(self, source, n: int = 512, seed: int = 0) -> float:
        """Set ``scale_factor`` to 1 / std of the unscaled posterior-mode latents of ``n`` training views. A
        decoder-only fine-tune keeps the scale it started from: its latents are those of the original encoder."""
        from ..train.data import sample_batch

        if not self.config.train_encoder:
            return float(self.scale_factor)

        was = self.training
        self.eval()
        dev = self.scale_factor.device
        zs = []
        for step in range(0, n, 32):
            b = sample_batch(source, seed, step, 32, (1, 1), 1, 1)
            zs.append(self.posterior(b.query.to(dev)).mode())
        std = torch.cat(zs).float().std()
        self.scale_factor.fill_(float(1.0 / std))
        self.train(was)
        return float(self.scale_factor)

    @torch.no_grad()
    def eval_grid(self, batch) -> Tensor:
        """Two rows: ground-truth views over their reconstructions."""
        x = batch.query
        return torch.cat([torch.cat(list(x), -1), torch.cat(list(self.reconstruct(x)), -1)], -2)
