"""A small monocular depth network, the stand-in for MiDaS (which IPSM uses and which cannot be downloaded
here): a GroupNorm U-Net from RGB to relative inverse depth (disparity, 0 = infinitely far), trained on
fewview-objects' rendered depth with MiDaS's scale-and-shift-invariant loss. Like MiDaS its output is
defined up to an affine map, so it is compared with renders through correlations, never as metric depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..pretrained import register_model
from .encoder import _gn, basic_stages, gn_stem


@dataclass
class DepthConfig:
    widths: tuple[int, ...] = (24, 48, 96, 128)  # encoder stages; each halves the resolution after the first
    background: float = 1.0  # grey level the objects are composited on (inputs only; targets are disparity)


def disparity_target(depth: Tensor) -> Tensor:
    """1 / z where z > 0 (the surface), 0 where z <= 0 (background, infinitely far)."""
    return torch.where(depth > 0, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))


def align_affine(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """``s * pred + t`` with (s, t) the least-squares fit to ``target`` on ``mask`` per image (B,1,H,W)."""
    m = mask.flatten(1).to(pred.dtype)
    p, g = pred.flatten(1), target.flatten(1)
    n = m.sum(1).clamp_min(1.0)
    mp, mg = (m * p).sum(1) / n, (m * g).sum(1) / n
    cov = (m * (p - mp[:, None]) * (g - mg[:, None])).sum(1)
    var = (m * (p - mp[:, None]) ** 2).sum(1)
    s = cov / var.clamp_min(1e-12)
    t = mg - s * mp
    return pred * s.view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1)


def ssi_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """MiDaS's scale-and-shift-invariant loss: mean |align(pred) - target| on ``mask``, divided by the mean
    absolute deviation of the target there (so that a scene's overall scale does not weight it). 0 for any
    affine copy of the target."""
    mask = torch.ones_like(target) if mask is None else mask.to(target.dtype)
    aligned = align_affine(pred, target, mask)
    n = mask.flatten(1).sum(1).clamp_min(1.0)
    err = (mask * (aligned - target).abs()).flatten(1).sum(1) / n
    mg = (mask * target).flatten(1).sum(1) / n
    scale = (mask * (target - mg.view(-1, 1, 1, 1)).abs()).flatten(1).sum(1) / n
    return (err / scale.clamp_min(1e-6)).mean()


def pearson(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pearson correlation of ``a`` and ``b`` (B,1,H,W) per image over ``mask``, (B,)."""
    m = torch.ones_like(a) if mask is None else mask.to(a.dtype)
    n = m.flatten(1).sum(1).clamp_min(1.0)
    ma = (m * a).flatten(1).sum(1) / n
    mb = (m * b).flatten(1).sum(1) / n
    da, db = (a.flatten(1) - ma[:, None]) * m.flatten(1), (b.flatten(1) - mb[:, None]) * m.flatten(1)
    return (da * db).sum(1) / ((da**2).sum(1).sqrt() * (db**2).sum(1).sqrt()).clamp_min(1e-12)


class _Up(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin + cskip, cout, 3, 1, 1, bias=False), _gn(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _gn(cout), nn.ReLU())  # fmt: skip

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], 1))


@register_model("depth", DepthConfig)
class DepthNet(nn.Module):
    """RGB (B,3,H,W) in [0,1] -> disparity (B,1,H,W) >= 0, up to scale and shift; any H, W."""

    needs_depth = True

    def __init__(self, config: DepthConfig | None = None):
        super().__init__()
        self.config = c = config or DepthConfig()
        w = c.widths
        self.stem = gn_stem(3, w[0])
        self.down = nn.ModuleList(basic_stages(w))
        self.up = nn.ModuleList([_Up(w[i], w[i - 1], w[i - 1]) for i in range(len(w) - 1, 0, -1)])
        self.head = nn.Conv2d(w[0], 1, 3, 1, 1)

    def forward_image(self, rgb: Tensor) -> Tensor:
        x = self.stem(rgb * 2 - 1)
        skips = []
        for blk in self.down:
            x = blk(x)
            skips.append(x)
        for up, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = up(x, skip)
        return F.softplus(self.head(x))

    def predict(self, rgb: Tensor) -> Tensor:
        """Disparity for images (B,3,H,W); differentiable with respect to ``rgb`` (IPSM's pseudo-view loss)."""
        return self.forward_image(rgb)

    def forward(self, batch) -> tuple[Tensor, dict[str, float]]:
        if batch.query_depth is None:
            raise ValueError("the depth network trains on depth maps: fewview-objects data (depth=True)")
        pred = self.forward_image(batch.query)
        target = disparity_target(batch.query_depth.float())
        loss = ssi_loss(pred, target)
        with torch.no_grad():
            obj = batch.query_depth > 0
            r = pearson(pred, target)
            r_obj = pearson(pred, target, obj)
        return loss, {"ssi": float(loss.detach()), "pearson": float(r.mean()), "pearson_object": float(r_obj.mean())}
