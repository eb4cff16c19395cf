"""SparseFusion's view-conditioned latent diffusion model (VLDM), trained jointly with its EFT.

The EFT renders a feature grid for the query camera at the latent resolution; the denoiser (a UNet in the
shipped VAE's latent space) reads the noisy query latent concatenated with that grid. As in the official code:

- EFT and VLDM train together: the EFT's Huber colour loss (δ = 0.1) on its RGB render at the latent grid,
  plus the diffusion loss, whose gradient is what trains the EFT's feature head;
- 2-5 context views (``--context-min 2 --context-max 5``);
- the query latent is repeated ``repeat`` times with independent t and noise (the official 12);
- the condition (the feature grid) is dropped for 10 % of the draws, for classifier-free guidance;
- ε-prediction on the continuous cosine schedule (diffusers' ``squaredcos_cap_v2``, its discretisation);
- the P2 loss weight (1 + SNR_t)^-0.5 of the official imagen-pytorch setup (``p2_gamma``);
- the loss is masked by the valid region (CO3D's un-padded pixels) downsampled to the latent grid, a cell valid
  where more than 0.6 of its pixels are; fewview-objects views are valid everywhere. The EFT's colour loss is
  masked the same way (the official code masks only the diffusion loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as option

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras
from ..diffusion.ldm import LatentDiffusion, LDMConfig
from ..pretrained import register_model
from .eft import EFT, EFTConfig


def latent_valid_mask(valid: Tensor, size: tuple[int, int], threshold: float = 0.6) -> Tensor:
    """(B, 1, h, w) float mask of the latent cells whose pixels of ``valid`` (B, 1, H, W) are valid for more than
    ``threshold`` of their area (the official code's 0.6)."""
    return (F.interpolate(valid.float(), size=size, mode="area") > threshold).float()


@dataclass
class VLDMConfig(LDMConfig):
    task: str = option(default="eft", metadata={"help": "eft: conditioned on the EFT's feature grid"})
    prediction: str = option(default="epsilon", metadata={"help": "epsilon (SparseFusion) | v_prediction | sample"})
    beta_schedule: str = option(default="squaredcos_cap_v2", metadata={"help": "the continuous cosine schedule"})
    block_out_channels: tuple[int, ...] = option(default=(64, 128, 128), metadata={"help": "UNet widths per level"})
    p2_gamma: float = option(default=0.5, metadata={"help": "P2 loss weight (1 + SNR_t)^-gamma (official 0.5)"})
    valid_threshold: float = option(
        default=0.6, metadata={"help": "a latent cell counts in the loss if this fraction of its pixels is valid"}
    )
    repeat: int = option(default=4, metadata={"help": "query latent repeats with independent t, noise (official 12)"})
    huber_delta: float = option(default=0.1, metadata={"help": "the EFT's Huber colour loss"})
    w_eft: float = option(default=1.0, metadata={"help": "weight of the EFT's colour loss"})
    eft_init: str = option(default="eft", metadata={"help": "start the EFT from these weights ('': random)"})
    eft_widths: tuple[int, ...] = option(default=(32, 48, 64), metadata={"help": "EFT encoder widths"})
    eft_width: int = option(default=48, metadata={"help": "EFT transformer width"})
    eft_layers: int = option(default=2, metadata={"help": "EFT layers per transformer"})
    eft_ffn: int = option(default=96, metadata={"help": "EFT feed-forward width"})
    eft_points: int = option(default=16, metadata={"help": "EFT depth samples per ray"})
    eft_feature_dim: int = option(default=64, metadata={"help": "channels of the feature grid"})


def eft_config(c: VLDMConfig) -> EFTConfig:
    return EFTConfig(widths=tuple(c.eft_widths), width=c.eft_width, layers=c.eft_layers, ffn=c.eft_ffn,
                     points=c.eft_points, feature_dim=c.eft_feature_dim)  # fmt: skip


@register_model("vldm", VLDMConfig)
class VLDM(LatentDiffusion):
    """Denoiser of query latents conditioned on the EFT feature grid of the query camera; owns its EFT."""

    tasks = ("eft",)
    config_class = VLDMConfig

    def __init__(self, config: VLDMConfig | None = None, vae=None):
        super().__init__(config or VLDMConfig(), vae=vae)
        self.eft = EFT(eft_config(self.config))
        if self.config.eft_init:
            self.load_eft(self.config.eft_init)

    def condition_channels(self) -> int:
        return self.config.eft_feature_dim

    def load_eft(self, name_or_path: str) -> None:
        """Start from a trained EFT's weights (its feature head is replaced when its width differs)."""
        from ..pretrained import from_pretrained, resolve_model_dir

        src = from_pretrained(resolve_model_dir(name_or_path)).state_dict()
        own = self.eft.state_dict()
        keep = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in keep]
        if any(not k.startswith("feature_head") for k in missing):
            raise ValueError(f"{name_or_path}: an EFT of another shape; set the --model-eft-* options to match it")
        self.eft.load_state_dict(keep, strict=False)

    # --------------------------------------------------------------- EFT grid
    def eft_grid(self, context: Tensor, c2w: Tensor, K: Tensor, q_c2w: Tensor, q_K: Tensor,
                 size: tuple[int, int], image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:  # fmt: skip
        """(features (B,F,h,w), rgb (B,3,h,w)) of the query cameras at ``size``, from context (B,n,3,H,W);
        ``q_K`` is for ``image_size`` and is rescaled to the grid."""
        h, w = size
        qk = q_K.clone()
        qk[:, 0] *= w / image_size[1]
        qk[:, 1] *= h / image_size[0]
        feats = self.eft.encode(context)
        dirs = self.eft.query_directions(q_c2w, qk, h, w)
        out = self.eft.render_rays(feats, context, c2w, K, q_c2w, dirs)
        b = context.shape[0]
        grid = lambda x: x.reshape(b, h, w, -1).permute(0, 3, 1, 2)  # noqa: E731
        return grid(out["features"]), grid(out["rgb"])

    def latent_grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        f = self.vae.downsample
        return image_size[0] // f, image_size[1] // f

    # ----------------------------------------------------------------- train
    def forward(self, batch) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        hw = tuple(batch.query.shape[-2:])
        size = self.latent_grid_size(hw)
        feats, rgb = self.eft_grid(batch.context, batch.context_c2w, batch.context_K, batch.query_c2w,
                                   batch.query_K, size, hw)  # fmt: skip
        with torch.no_grad():
            z0 = self.vae.encode(batch.query)
        gens = [g for g in batch.item_generators() for _ in range(c.repeat)]
        z = z0.repeat_interleave(c.repeat, 0)
        cond = {"concat": feats.repeat_interleave(c.repeat, 0)}
        valid = None if batch.query_valid is None else latent_valid_mask(batch.query_valid, size, c.valid_threshold)
        mask = None if valid is None else valid.repeat_interleave(c.repeat, 0)
        diffusion = self.diffusion_loss(z, cond, gens, mask)
        target = F.interpolate(batch.query, size=size, mode="area")
        if valid is None:
            colour = F.huber_loss(rgb, target, delta=c.huber_delta)
        else:  # padding shows no photo: its colour is unknown (an object cut by the image border continues there)
            colour = (F.huber_loss(rgb, target, delta=c.huber_delta, reduction="none") * valid).mean()
        loss = diffusion + c.w_eft * colour
        return loss, {"diffusion": float(diffusion.detach()), "eft_huber": float(colour.detach())}

    # ---------------------------------------------------------------- sample
    @torch.no_grad()
    def condition(self, context: Tensor, context_cams: Cameras, target: Cameras) -> tuple[dict, Tensor]:
        """({"concat": feature grid}, EFT RGB at the grid) for one target camera from context (n,3,H,W)."""
        dev = self.device
        hw = (int(target.size[0, 0]), int(target.size[0, 1]))
        size = self.latent_grid_size(hw)
        feats, rgb = self.eft_grid(context[None].to(dev), context_cams.c2w[None].float().to(dev),
                                   context_cams.K[None].float().to(dev), target.c2w[:1].float().to(dev),
                                   target.K[:1].float().to(dev), size, hw)  # fmt: skip
        return {"concat": feats}, rgb

    @torch.no_grad()
    def sample(self, context: Tensor, context_cams: Cameras, target: Cameras, n: int = 1, steps: int = 50,
               guidance: float = 1.0, generator: torch.Generator | None = None,
               clip_x0: float | None = None) -> Tensor:  # fmt: skip
        """``n`` DDIM samples (n,3,H,W) of the target camera's view given the context views (``clip_x0`` clips the
        clean estimate to ±clip_x0 at every step)."""
        cond, _ = self.condition(context, context_cams, target)
        cond = {"concat": cond["concat"].expand(n, -1, -1, -1)}
        z = self.sample_latents(cond, n, steps, "ddim", 0.0, guidance, generator, clip_x0=clip_x0)
        return self.vae.decode(z).clamp(0, 1)

    @torch.no_grad()
    def eval_grid(self, batch) -> Tensor:
        """Rows: first context view / EFT colour (upsampled) / sample / ground truth."""
        g = torch.Generator().manual_seed(0)
        was = self.training
        self.eval()
        hw = tuple(batch.query.shape[-2:])
        feats, rgb = self.eft_grid(batch.context, batch.context_c2w, batch.context_K, batch.query_c2w,
                                   batch.query_K, self.latent_grid_size(hw), hw)  # fmt: skip
        z = self.sample_latents({"concat": feats}, batch.query.shape[0], self.config.eval_steps, generator=g)
        pred = self.vae.decode(z).clamp(0, 1)
        self.train(was)
        row = lambda x: torch.cat(list(x), -1)  # noqa: E731
        up = F.interpolate(rgb, size=hw, mode="nearest")
        return torch.cat([row(batch.context[:, 0]), row(up), row(pred), row(batch.query)], -2)
