"""A triplane large reconstruction model (LRM, as TripoSR/Real3D), small enough to train on a CPU.

One image in, a triplane out: ViT patch tokens of the input (encoder trained from scratch: no DINO weights
exist here); learned triplane tokens that cross-attend to the image tokens and self-attend; the token planes
upsampled to feature planes; a NeRF MLP on the summed plane features (density exp(x − 1), colour sigmoid) rendered
by volume rendering inside the object box. The input camera is canonical: every other camera is re-expressed
relative to it (:func:`canonical_frame`), so the model never sees absolute poses.

Training on multi-view data (Real3D's supervised stage): MSE colour ×2 + mask ×1 on the query rays. The
LPIPS term, the single-view self-training and the cycle are not implemented yet (docs/real3d.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import look_at
from ..pretrained import register_model
from ..render.volume import ray_aabb, weights_from_alpha


@dataclass
class LRMConfig:
    image_size: int = 64  # input resolution
    patch: int = 8
    width: int = 96
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    plane_tokens: int = 8  # tokens per plane side
    plane_res: int = 32  # feature-plane side after upsampling
    plane_channels: int = 16
    hidden: int = 32  # NeRF MLP width
    samples: int = 32  # per ray, uniform in the box
    box: float = 1.0  # the object box half-side (objects are scaled into the unit sphere)
    distance: float = 3.0  # canonical input camera distance to the origin
    w_rgb: float = 2.0
    w_mask: float = 1.0
    background: float = 1.0


def canonical_frame(input_c2w: Tensor, distance: float = 3.0) -> Tensor:
    """The rigid map (B, 4, 4) taking the input camera to the canonical one (at (distance, 0, 0), z up, looking
    at the origin): apply it to every camera (T @ c2w) to express it relative to the input view."""
    b = input_c2w.shape[0]
    eye = torch.tensor([distance, 0.0, 0.0], dtype=torch.float64).expand(b, 3)
    canon = look_at(eye, torch.zeros_like(eye), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(b, 3))
    return canon.to(input_c2w) @ torch.linalg.inv(input_c2w)


def _block(w: int, heads: int, cross: bool) -> nn.ModuleDict:
    d = nn.ModuleDict({"norm1": nn.LayerNorm(w), "self": nn.MultiheadAttention(w, heads, batch_first=True),
                       "norm3": nn.LayerNorm(w), "ffn": nn.Sequential(nn.Linear(w, 2 * w), nn.GELU(),
                                                                      nn.Linear(2 * w, w))})  # fmt: skip
    if cross:
        d["norm2"] = nn.LayerNorm(w)
        d["cross"] = nn.MultiheadAttention(w, heads, batch_first=True)
    return d


@register_model("lrm", LRMConfig)
class LRM(nn.Module):
    def __init__(self, config: LRMConfig | None = None):
        super().__init__()
        self.config = c = config or LRMConfig()
        n_patch = (c.image_size // c.patch) ** 2
        self.patch_embed = nn.Conv2d(3, c.width, c.patch, c.patch)
        self.patch_pos = nn.Parameter(torch.randn(1, n_patch, c.width) * 0.02)
        self.encoder = nn.ModuleList([_block(c.width, c.heads, False) for _ in range(c.encoder_layers)])
        self.plane_tokens = nn.Parameter(torch.randn(1, 3 * c.plane_tokens**2, c.width) * 0.02)
        self.decoder = nn.ModuleList([_block(c.width, c.heads, True) for _ in range(c.decoder_layers)])
        up = c.plane_res // c.plane_tokens
        self.upsample = nn.ConvTranspose2d(c.width, c.plane_channels, up, up)
        self.mlp = nn.Sequential(nn.Linear(c.plane_channels, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden),
                                 nn.SiLU(), nn.Linear(c.hidden, 4))  # fmt: skip

    @staticmethod
    def _run(blk: nn.ModuleDict, x: Tensor, ctx: Tensor | None = None) -> Tensor:
        h = blk["norm1"](x)
        x = x + blk["self"](h, h, h, need_weights=False)[0]
        if ctx is not None:
            h = blk["norm2"](x)
            x = x + blk["cross"](h, ctx, ctx, need_weights=False)[0]
        return x + blk["ffn"](blk["norm3"](x))

    def triplane(self, image: Tensor) -> Tensor:
        """(B, 3, C, R, R) feature planes (xy, xz, yz) of input images (B, 3, H, W) in [0, 1]."""
        c = self.config
        if image.shape[-2:] != (c.image_size, c.image_size):
            image = F.interpolate(image, size=(c.image_size, c.image_size), mode="area")
        tok = self.patch_embed(image * 2 - 1).flatten(2).transpose(1, 2) + self.patch_pos
        for blk in self.encoder:
            tok = self._run(blk, tok)
        x = self.plane_tokens.expand(image.shape[0], -1, -1)
        for blk in self.decoder:
            x = self._run(blk, x, tok)
        b, t = x.shape[0], c.plane_tokens
        planes = x.reshape(b * 3, t, t, c.width).permute(0, 3, 1, 2)
        return self.upsample(planes).reshape(b, 3, c.plane_channels, c.plane_res, c.plane_res)

    def query(self, planes: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Density (B, P) and colour (B, P, 3) at points x (B, P, 3) in the canonical frame."""
        c = self.config
        p = (x / c.box).clamp(-1, 1)
        coords = torch.stack([p[..., [0, 1]], p[..., [0, 2]], p[..., [1, 2]]], 1)  # (B, 3, P, 2)
        b = x.shape[0]
        f = F.grid_sample(planes.flatten(0, 1), coords.flatten(0, 1)[:, None], mode="bilinear", align_corners=False)
        f = f.reshape(b, 3, c.plane_channels, -1).sum(1).transpose(1, 2)  # (B, P, C)
        o = self.mlp(f)
        return torch.exp(o[..., 0] - 1.0), torch.sigmoid(o[..., 1:])

    def render_rays(self, planes: Tensor, origins: Tensor, dirs: Tensor, noise: Tensor | None = None) -> dict:
        """Colour (B, R, 3), opacity (B, R) and depth of rays (B, R, 3) in the canonical frame."""
        c = self.config
        b, r = origins.shape[:2]
        box = torch.tensor([[-c.box] * 3, [c.box] * 3], dtype=origins.dtype, device=origins.device)
        near, far, hit = ray_aabb(origins.reshape(-1, 3), dirs.reshape(-1, 3), box)
        near, far = near.reshape(b, r), torch.where(hit, far, near).reshape(b, r)
        u = torch.arange(c.samples, device=origins.device, dtype=origins.dtype)
        u = (u + (noise[..., : c.samples] if noise is not None else 0.5)) / c.samples
        t = near[..., None] + (far - near)[..., None] * u
        pts = origins[:, :, None] + dirs[:, :, None] * t[..., None]
        sigma, rgb = self.query(planes, pts.reshape(b, -1, 3))
        sigma, rgb = sigma.reshape(b, r, -1), rgb.reshape(b, r, -1, 3)
        delta = ((far - near) / c.samples)[..., None].expand_as(sigma)
        w, _ = weights_from_alpha((1 - torch.exp(-sigma * delta)).flatten(0, 1))
        w = w.reshape(b, r, -1)
        acc = w.sum(-1)
        colour = (w[..., None] * rgb).sum(-2) + (1 - acc)[..., None] * c.background
        return {"rgb": colour, "opacity": acc, "depth": (w * t).sum(-1)}

    def forward(self, batch) -> tuple[Tensor, dict[str, float]]:
        """Supervised stage on multi-view data: the first context view is the input, the query the target."""
        from ..cameras import Cameras, camera_rays

        c = self.config
        T = canonical_frame(batch.context_c2w[:, 0].double(), c.distance)
        q_c2w = (T @ batch.query_c2w.double()).float()
        h, w = batch.query.shape[-2:]
        rays = camera_rays(Cameras(q_c2w, batch.query_K, torch.tensor([h, w])))
        o, d = rays.origins.reshape(len(q_c2w), -1, 3), rays.directions.reshape(len(q_c2w), -1, 3)
        tgt = batch.query.permute(0, 2, 3, 1).reshape(len(q_c2w), -1, 3)
        mask = batch.query_mask.reshape(len(q_c2w), -1)
        if batch.rays is not None:
            idx = batch.rays
            i3 = idx[..., None].expand(-1, -1, 3)
            o, d, tgt = torch.gather(o, 1, i3), torch.gather(d, 1, i3), torch.gather(tgt, 1, i3)
            mask = torch.gather(mask, 1, idx)
        out = self.render_rays(self.triplane(batch.context[:, 0]), o, d, batch.noise)
        rgb = F.mse_loss(out["rgb"], tgt)
        m = F.mse_loss(out["opacity"], mask)
        return c.w_rgb * rgb + c.w_mask * m, {"mse": float(rgb.detach()), "mask": float(m.detach())}

    @torch.no_grad()
    def render(self, image: Tensor, input_cam, target) -> dict[str, Tensor]:
        """rgb (3, h, w) and opacity of camera ``target`` from one input image (3, H, W) seen by ``input_cam``."""
        from ..cameras import camera_rays

        T = canonical_frame(input_cam.c2w[:1].double(), self.config.distance)
        cam = type(target)((T @ target.c2w[:1].double()).float(), target.K[:1].float(), target.size[:1])
        rays = camera_rays(cam)
        h, w = rays.origins.shape[1:3]
        out = self.render_rays(self.triplane(image[None]), rays.origins.reshape(1, -1, 3),
                               rays.directions.reshape(1, -1, 3))  # fmt: skip
        return {"rgb": out["rgb"].reshape(h, w, 3).permute(2, 0, 1), "opacity": out["opacity"].reshape(1, h, w)}
