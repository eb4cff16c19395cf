"""The Epipolar Feature Transformer (EFT) of SparseFusion (after GPNR), as in its official code, sized
for CPUs by default.

For each query ray, ``points`` depths are taken uniformly in a band around the mean camera distance.
Each depth point is projected into every context view, where the encoder's features (at half
resolution) and the RGB are sampled. A token is that sample plus three harmonic embeddings: the
Plücker coordinates (d, o x d) of the context ray through the point, the Plücker coordinates of the
query ray (both in the query camera's frame), and the normalised depth. Three transformers follow:

- T1 attends across the views of each point.
- T2 attends along each view's epipolar line, then attention-pools over depth.
- T3 attends across views, then pools.

An RGB head (sigmoid) and a feature head read the pooled token. Rays are independent, so the EFT
renders any resolution; the diffusion model reads its feature grid at the latent resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import Cameras, camera_rays
from ..fields.base import positional_encoding
from ..pretrained import register_model
from .encoder import ResNetEncoder
from .pixelnerf import sample_features, scene_scale


@dataclass
class EFTConfig:
    widths: tuple[int, ...] = (32, 48, 64)
    width: int = 64  # transformer width (SparseFusion: 256)
    layers: int = 2  # per transformer (SparseFusion: 4)
    heads: int = 1
    ffn: int = 128  # (SparseFusion: 256)
    dropout: float = 0.0  # (SparseFusion: 0.1)
    points: int = 20  # depth samples per query ray, as in SparseFusion
    band: float = 0.45  # depths in d * (1 -+ band), d = mean distance of the context cameras to the origin
    plucker_freqs: int = 6  # 6 x 13 = 78 dims, as in SparseFusion
    depth_freqs: int = 6  # 13 dims
    feature_dim: int = 64  # channels of the feature grid handed to the diffusion model (SparseFusion: 256)
    background: float = 1.0


def _plucker(origin: Tensor, direction: Tensor) -> Tensor:
    d = F.normalize(direction, dim=-1)
    return torch.cat([d, torch.cross(origin, d, dim=-1)], -1)


def _transformer(c: EFTConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(c.width, c.heads, c.ffn, c.dropout, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)


class AttentionPool(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        self.score = nn.Linear(w, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, S, W) -> (N, W), a softmax-weighted mean over S."""
        return (torch.softmax(self.score(x), dim=1) * x).sum(1)


@register_model("eft", EFTConfig)
class EFT(nn.Module):
    loss_leaves_parameters_unused = True  # the RGB loss does not reach the feature head

    def __init__(self, config: EFTConfig | None = None):
        super().__init__()
        self.config = c = config or EFTConfig()
        self.encoder = ResNetEncoder(tuple(c.widths))
        d_pl, d_depth = 6 * (1 + 2 * c.plucker_freqs), 1 + 2 * c.depth_freqs
        self.token = nn.Linear(self.encoder.out_channels + 3 + 2 * d_pl + d_depth, c.width)
        self.t1, self.t2, self.t3 = _transformer(c), _transformer(c), _transformer(c)
        self.pool_depth, self.pool_views = AttentionPool(c.width), AttentionPool(c.width)
        self.norm = nn.LayerNorm(c.width)
        self.rgb_head = nn.Linear(c.width, 3)
        self.feature_head = nn.Linear(c.width, c.feature_dim)

    def encode(self, context: Tensor) -> Tensor:
        b, n = context.shape[:2]
        f = self.encoder(context.flatten(0, 1))
        return f.reshape(b, n, *f.shape[1:])

    def epipolar_samples(self, c2w: Tensor, K: Tensor, q_c2w: Tensor, dirs_q: Tensor,
                         noise: Tensor | None = None) -> dict[str, Tensor]:  # fmt: skip
        """Ray sampling and view sampling: ``points`` depths per query ray in a band around the mean context
        distance (``u`` (B, R, P) in [0, 1], ``x`` (B, R, P, 3) in the query frame) and their pixel positions ``uv``
        (B, n, R, P, 2) in every context view (``rel``: context cameras in the query frame; ``scale``)."""
        c = self.config
        b, r, P = dirs_q.shape[0], dirs_q.shape[1], c.points
        scale = scene_scale(c2w)
        near, far = scale * (1 - c.band), scale * (1 + c.band)
        u = torch.arange(P, device=dirs_q.device, dtype=dirs_q.dtype)
        u = (u + (noise[..., :P] if noise is not None else 0.5)) / P
        u = u.expand(b, r, P)
        t = near[:, None, None] + (far - near)[:, None, None] * u  # (B, R, P)
        rel = torch.linalg.inv(q_c2w)[:, None] @ c2w  # context cameras in the query frame (B, n, 4, 4)
        x = dirs_q[:, :, None] * t[..., None]  # (B, R, P, 3) in the query frame
        w2c = torch.linalg.inv(rel)
        xc = torch.einsum("bnij,brpj->bnrpi", w2c[..., :3, :3], x) + w2c[:, :, None, None, :3, 3]
        uv = torch.einsum("bnij,bnrpj->bnrpi", K, xc / xc[..., 2:3].clamp_min(1e-4))[..., :2]
        return {"u": u, "x": x, "uv": uv, "rel": rel, "scale": scale}

    def render_rays(self, feats: Tensor, context: Tensor, c2w: Tensor, K: Tensor, q_c2w: Tensor, dirs_q: Tensor,
                    noise: Tensor | None = None) -> dict[str, Tensor]:  # fmt: skip
        """RGB (B, R, 3) and features (B, R, F) of query rays with unit directions ``dirs_q`` (B, R, 3) in the
        query camera's frame (origin at its centre). Context cameras ``c2w`` (B, n, 4, 4) and ``K`` (B, n, 3, 3)
        are world-space; ``q_c2w`` (B, 4, 4) is the query camera. ``noise`` (B, R, >=P) jitters the depths."""
        c = self.config
        b, n = feats.shape[:2]
        r, P = dirs_q.shape[1], c.points
        s = self.epipolar_samples(c2w, K, q_c2w, dirs_q, noise)
        u, x, uv, rel, scale = s["u"], s["x"], s["uv"], s["rel"], s["scale"]
        size = tuple(context.shape[-2:])
        flat_uv = uv.reshape(b * n, r * P, 2)
        f = sample_features(feats.flatten(0, 1), flat_uv, size)
        rgb = sample_features(context.flatten(0, 1), flat_uv, size)
        samp = torch.cat([f, rgb], -1).reshape(b, n, r, P, -1)
        centers = rel[:, :, None, None, :3, 3].expand(b, n, r, P, 3)
        ctx_ray = positional_encoding(_plucker(centers / scale[:, None, None, None, None],
                                               x[:, None] - centers), c.plucker_freqs)  # fmt: skip
        q_ray = positional_encoding(_plucker(torch.zeros_like(dirs_q), dirs_q), c.plucker_freqs)
        depth = positional_encoding(u[..., None] * 2 - 1, c.depth_freqs)
        tok = torch.cat(
            [samp, ctx_ray, q_ray[:, None, :, None].expand(b, n, r, P, -1), depth[:, None].expand(b, n, r, P, -1)], -1
        )
        h = self.token(tok)  # (B, n, R, P, W)
        W = h.shape[-1]
        h = self.t1(h.permute(0, 2, 3, 1, 4).reshape(-1, n, W))  # across views, per point
        h = h.reshape(b, r, P, n, W).permute(0, 1, 3, 2, 4).reshape(-1, P, W)
        h = self.pool_depth(self.t2(h))  # along each epipolar line, pooled over depth
        h = self.pool_views(self.t3(h.reshape(b * r, n, W)))  # across views, pooled
        h = self.norm(h)
        return {"rgb": torch.sigmoid(self.rgb_head(h)).reshape(b, r, 3),
                "features": self.feature_head(h).reshape(b, r, -1)}  # fmt: skip

    @staticmethod
    def query_directions(c2w: Tensor, K: Tensor, h: int, w: int) -> Tensor:
        """Unit ray directions (B, h*w, 3) of every pixel, in each query camera's own frame."""
        cams = Cameras(torch.eye(4, dtype=c2w.dtype, device=c2w.device).expand(len(c2w), 4, 4), K,
                       torch.tensor([h, w]))  # fmt: skip
        return camera_rays(cams, dtype=c2w.dtype).directions.reshape(len(c2w), -1, 3).to(c2w.device)

    def forward(self, batch) -> tuple[Tensor, dict[str, float]]:
        """MSE of the RGB branch on the batch's query rays (SparseFusion's EFT loss)."""
        feats = self.encode(batch.context)
        h, w = batch.query.shape[-2:]
        dirs = self.query_directions(batch.query_c2w, batch.query_K, h, w)
        tgt = batch.query.permute(0, 2, 3, 1).reshape(len(dirs), -1, 3)
        if batch.rays is not None:
            idx = batch.rays[..., None].expand(-1, -1, 3)
            dirs, tgt = torch.gather(dirs, 1, idx), torch.gather(tgt, 1, idx)
        out = self.render_rays(feats, batch.context, batch.context_c2w, batch.context_K, batch.query_c2w, dirs,
                               batch.noise)  # fmt: skip
        mse = F.mse_loss(out["rgb"], tgt)
        return mse, {"mse": float(mse.detach())}

    @torch.no_grad()
    def render(self, context: Tensor, context_cams: Cameras, target: Cameras, chunk: int = 2048) -> dict[str, Tensor]:
        """``rgb`` (3, h, w) and ``features`` (F, h, w) of camera ``target`` (one) from context images (n, 3, H, W)."""
        dev = next(self.parameters()).device
        ctx = context[None].to(dev)
        feats = self.encode(ctx)
        c2w, K = context_cams.c2w[None].float().to(dev), context_cams.K[None].float().to(dev)
        q_c2w = target.c2w[:1].float().to(dev)
        h, w = int(target.size[0, 0]), int(target.size[0, 1])
        dirs = self.query_directions(q_c2w, target.K[:1].float().to(dev), h, w)
        outs = [self.render_rays(feats, ctx, c2w, K, q_c2w, dirs[:, i : i + chunk]) for i in range(0, h * w, chunk)]
        rgb = torch.cat([o["rgb"] for o in outs], 1)[0]
        fts = torch.cat([o["features"] for o in outs], 1)[0]
        return {
            "rgb": rgb.reshape(h, w, 3).permute(2, 0, 1).cpu(),
            "features": fts.reshape(h, w, -1).permute(2, 0, 1).cpu(),
        }
