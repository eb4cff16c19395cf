"""pixelNeRF (Yu et al. 2021): image-conditioned NeRF. Each 3-D point is projected into every context
view; the pixel-aligned encoder features, the point and the ray direction in that view's camera frame
feed an MLP whose hidden states are averaged over views half-way; coarse + fine volume rendering."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import Cameras, camera_rays
from ..fields.base import positional_encoding
from ..pretrained import register_model
from ..render.image import render_image
from ..render.volume import sample_pdf, weights_from_alpha
from .encoder import ResNetEncoder


@dataclass
class PixelNeRFConfig:
    widths: tuple[int, ...] = (32, 48, 64)
    hidden: int = 128
    blocks_before_mean: int = 2
    blocks_after_mean: int = 1
    pos_freqs: int = 6
    dir_freqs: int = 4
    samples_coarse: int = 24
    samples_fine: int = 16
    band: float = 0.45  # near/far = d * (1 -+ band), d = mean distance of the context cameras to the origin
    background: float = 1.0
    in_channels: int = 3  # encoder input channels (DFM's target encoder reads more than colour)
    features: int = 0  # extra rendered feature channels beside colour (DFM's deterministic estimate)
    time_dim: int = 0  # per-view time embedding: FiLM in every block before the mean, and in the encoder (DFM)


class ResBlock(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        self.l1, self.l2 = nn.Linear(w, w), nn.Linear(w, w)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.l2(F.relu(self.l1(F.relu(x))))


def sample_features(feat: Tensor, uv: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear features (N, P, C) at pixel coordinates uv (N, P, 2) (pixel centres at +0.5) of images of
    ``size`` (H, W); ``feat`` (N, C, h, w) covers the whole image at any resolution. Border padding."""
    h, w = size
    grid = torch.stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1], -1)[:, None]
    return F.grid_sample(feat, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0].transpose(
        1, 2
    )


def scene_scale(c2w: Tensor) -> Tensor:
    """(B,) mean distance of each scene's context cameras to the world origin (the object centre)."""
    return c2w[..., :3, 3].norm(dim=-1).mean(-1)


@register_model("pixelnerf", PixelNeRFConfig)
class PixelNeRF(nn.Module):
    def __init__(self, config: PixelNeRFConfig | None = None):
        super().__init__()
        self.config = c = config or PixelNeRFConfig()
        self.encoder = ResNetEncoder(tuple(c.widths), in_channels=c.in_channels, time_dim=c.time_dim)
        d_in = 3 * (1 + 2 * c.pos_freqs) + 3 * (1 + 2 * c.dir_freqs) + self.encoder.out_channels
        self.inp = nn.Linear(d_in, c.hidden)
        self.before = nn.ModuleList([ResBlock(c.hidden) for _ in range(c.blocks_before_mean)])
        self.after = nn.ModuleList([ResBlock(c.hidden) for _ in range(c.blocks_after_mean)])
        self.out = nn.Linear(c.hidden, 4 + c.features)
        self.film = None
        if c.time_dim > 0:  # zero-initialised: the time embedding starts as the identity modulation
            self.film = nn.ModuleList([nn.Linear(c.time_dim, 2 * c.hidden) for _ in range(1 + c.blocks_before_mean)])
            for f in self.film:
                nn.init.zeros_(f.weight)
                nn.init.zeros_(f.bias)

    # ------------------------------------------------------------------ parts
    def encode(self, context: Tensor, temb: Tensor | None = None) -> Tensor:
        """(B, n, in_channels, H, W) -> (B, n, C, H/2, W/2); ``temb`` (B, n, time_dim) for a time-conditioned one."""
        b, n = context.shape[:2]
        f = self.encoder(context.flatten(0, 1), None if temb is None else temb.flatten(0, 1))
        return f.reshape(b, n, *f.shape[1:])

    def query(self, feats: Tensor, c2w: Tensor, K: Tensor, size, x: Tensor, d: Tensor, scale: Tensor,
              temb: Tensor | None = None):  # fmt: skip
        """Density (B, P) and colour (B, P, 3 + features) at world points x (B, P, 3) seen along unit directions d;
        ``temb`` (B, n, time_dim) modulates each view's hidden states (FiLM) in a time-conditioned field."""
        b, n = feats.shape[:2]
        w2c = torch.linalg.inv(c2w)  # (B, n, 4, 4)
        R, t = w2c[..., :3, :3], w2c[..., :3, 3]
        xc = torch.einsum("bnij,bpj->bnpi", R, x) + t[:, :, None]  # (B, n, P, 3)
        dc = torch.einsum("bnij,bpj->bnpi", R, d)
        z = xc[..., 2:3].clamp_min(1e-4)
        uv = torch.einsum("bnij,bnpj->bnpi", K, xc / z)[..., :2]
        f = sample_features(feats.flatten(0, 1), uv.flatten(0, 1), size).reshape(b, n, x.shape[1], -1)
        s = scale[:, None, None, None]
        h = torch.cat([positional_encoding(xc / s, self.config.pos_freqs),
                       positional_encoding(dc, self.config.dir_freqs), f], -1)  # fmt: skip
        h = self.inp(h)
        if self.film is not None and temb is None:
            raise ValueError("this field is time-conditioned: pass temb")
        film = None if self.film is None else [f(temb)[:, :, None] for f in self.film]  # (B, n, 1, 2 hidden)
        for i, blk in enumerate([None, *self.before]):
            h = h if blk is None else blk(h)
            if film is not None:
                scale_, shift = film[i].chunk(2, -1)
                h = h * (1 + scale_) + shift
        h = h.mean(1)
        for blk in self.after:
            h = blk(h)
        o = self.out(F.relu(h))
        colour = torch.cat([torch.sigmoid(o[..., 1:4]), o[..., 4:]], -1)
        return F.softplus(o[..., 0] - 1.0) / scale[:, None], colour

    def render_rays(self, feats, c2w, K, size, origins: Tensor, dirs: Tensor, noise: Tensor | None = None,
                    temb: Tensor | None = None):  # fmt: skip
        """Coarse + fine rendering of rays (B, R, 3). ``noise`` (B, R, S) jitters the coarse samples (training);
        without it, bin centres. Returns dict of (B, R, ...) tensors: rgb, rgb_coarse, depth, opacity, and
        ``features`` (B, R, F) when the field has some; ``weights`` and ``t`` (B, R, S) of the final pass."""
        c = self.config
        b, r = origins.shape[:2]
        scale = scene_scale(c2w)
        near, far = scale * (1 - c.band), scale * (1 + c.band)
        S = c.samples_coarse
        u = torch.arange(S, device=origins.device, dtype=origins.dtype)
        u = u + (noise[..., :S] if noise is not None else 0.5)
        t = (near[:, None, None] + (far - near)[:, None, None] * u / S).expand(b, r, S)
        out_c = self._composite(feats, c2w, K, size, origins, dirs, t, scale, temb)
        if c.samples_fine > 0:
            mids = 0.5 * (t[..., 1:] + t[..., :-1])
            edges = torch.cat([t[..., :1], mids, t[..., -1:]], -1)
            tf = sample_pdf(edges.flatten(0, 1), out_c["weights"].flatten(0, 1), c.samples_fine, perturb=False)
            t_all, _ = torch.sort(torch.cat([t, tf.reshape(b, r, -1)], -1), -1)
            out = self._composite(feats, c2w, K, size, origins, dirs, t_all, scale, temb)
        else:
            out, t_all = out_c, t
        res = {"rgb": out["rgb"][..., :3], "rgb_coarse": out_c["rgb"][..., :3], "depth": out["depth"],
               "opacity": out["opacity"], "weights": out["weights"], "t": t_all}  # fmt: skip
        if c.features:
            res["features"] = out["rgb"][..., 3:]
        return res

    def _composite(self, feats, c2w, K, size, origins, dirs, t, scale, temb=None):
        b, r, s = t.shape
        x = origins[:, :, None] + dirs[:, :, None] * t[..., None]
        d = dirs[:, :, None].expand(b, r, s, 3)
        sigma, rgb = self.query(feats, c2w, K, size, x.reshape(b, -1, 3), d.reshape(b, -1, 3), scale, temb)
        sigma, rgb = sigma.reshape(b, r, s), rgb.reshape(b, r, s, -1)
        deltas = torch.cat([t[..., 1:] - t[..., :-1], torch.full_like(t[..., :1], 1e10)], -1)
        alpha = 1 - torch.exp(-sigma * deltas)
        w, _ = weights_from_alpha(alpha.flatten(0, 1))
        w = w.reshape(b, r, s)
        acc = w.sum(-1)
        color = (w[..., None] * rgb).sum(-2)
        color = torch.cat([color[..., :3] + (1 - acc)[..., None] * self.config.background, color[..., 3:]], -1)
        return {"rgb": color, "weights": w, "depth": (w * t).sum(-1), "opacity": acc}

    # ------------------------------------------------------------ public use
    def forward(self, batch) -> tuple[Tensor, dict[str, float]]:
        return self.loss(batch)

    def loss(self, batch) -> tuple[Tensor, dict[str, float]]:
        """MSE of fine and coarse renders of the batch's query rays."""
        feats = self.encode(batch.context)
        size = tuple(batch.context.shape[-2:])
        origins, dirs, target = self._query_rays(batch)
        out = self.render_rays(feats, batch.context_c2w, batch.context_K, size, origins, dirs, batch.noise)
        mse = F.mse_loss(out["rgb"], target)
        mse_c = F.mse_loss(out["rgb_coarse"], target)
        return mse + mse_c, {"mse": float(mse.detach()), "mse_coarse": float(mse_c.detach())}

    def _query_rays(self, batch):
        b = batch.query.shape[0]
        h, w = batch.query.shape[-2:]
        cams = Cameras(batch.query_c2w, batch.query_K, torch.tensor([h, w]))
        rays = camera_rays(cams, dtype=batch.query.dtype)
        o, d = rays.origins.reshape(b, -1, 3), rays.directions.reshape(b, -1, 3)
        tgt = batch.query.permute(0, 2, 3, 1).reshape(b, -1, 3)
        if batch.rays is not None:
            idx = batch.rays
            o, d, tgt = (torch.gather(a, 1, idx[..., None].expand(-1, -1, 3)) for a in (o, d, tgt))
        return o.to(batch.query.device), d.to(batch.query.device), tgt

    @torch.no_grad()
    def render(self, context: Tensor, context_cams: Cameras, target: Cameras, chunk: int = 4096) -> dict[str, Tensor]:
        """Render camera ``target`` (one) from context images (n, 3, H, W) with cameras ``context_cams``:
        ``rgb`` (3, h, w), ``depth`` (1, h, w) (divided by opacity), ``opacity`` (1, h, w)."""
        dev = next(self.parameters()).device
        feats = self.encode(context[None].to(dev))
        c2w, K = context_cams.c2w[None].float().to(dev), context_cams.K[None].float().to(dev)
        size = tuple(context.shape[-2:])
        return render_image(lambda o, d: ray_outputs(self.render_rays(feats, c2w, K, size, o[None], d[None])),
                            target, chunk, dev)  # fmt: skip


def ray_outputs(out: dict) -> SimpleNamespace:
    """One batch item's ``rgb``/``depth``/``opacity`` of a (1, R, ...) ray render, as :func:`render_image` reads
    them."""
    return SimpleNamespace(rgb=out["rgb"][0], depth=out["depth"][0], opacity=out["opacity"][0])
