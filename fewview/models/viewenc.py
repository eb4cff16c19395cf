"""A view-invariant image encoder for Real3D's semantic loss, trained here on multi-view objects.

Real3D compares a novel render with the input image through CLIP features; CLIP cannot be had here. This encoder
is the alternative to the frozen ImageNet AlexNet trunk (:meth:`fewview.models.lrm.LRM.semantic_features`): a
small GroupNorm ResNet trained contrastively (InfoNCE, SimCLR's loss) so that two views of one object map to
nearby unit vectors and views of other objects do not. The positive pair is a context view and the query view of
one training item; the negatives are the other items of the process's batch (views of the same object elsewhere
in the batch are not counted as negatives). Each view is composited on white or on grey at random, since Real3D
compares renders on white with inputs on grey. It trains on set A (``group``: the parametric objects) only, so
the single-view set B never lends it a second view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..pretrained import register_model
from .encoder import basic_stages, gn_stem


@dataclass
class ViewEncoderConfig:
    widths: tuple[int, ...] = (32, 64, 128, 256)  # stages; every one after the first halves the resolution
    dim: int = 128  # embedding size
    image_size: int = 64
    temperature: float = 0.1
    grey: float = 0.5  # the second background views are composited on
    group: str = "parametric"  # the training objects: set A
    background: float = 1.0  # the trainer's background (images arrive composited on it)


def info_nce(za: Tensor, zb: Tensor, temperature: float, same: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric InfoNCE of unit embeddings (N, D) paired row by row: the mean cross-entropy of each row's
    similarities (÷ temperature) with its partner as the label, both ways. ``same`` (N, N) bool marks pairs of the
    same object, which are left out of the negatives. Returns (loss, top-1 accuracy of a→b)."""
    logits = za @ zb.T / temperature
    if same is not None:
        off = same & ~torch.eye(len(za), dtype=torch.bool, device=za.device)
        logits = logits.masked_fill(off, float("-inf"))
    labels = torch.arange(len(za), device=za.device)
    loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    return loss, (logits.argmax(1) == labels).float().mean()


@register_model("viewenc", ViewEncoderConfig)
class ViewEncoder(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> unit embeddings (B, dim)."""

    def __init__(self, config: ViewEncoderConfig | None = None):
        super().__init__()
        self.config = c = config or ViewEncoderConfig()
        w = c.widths
        self.stem = gn_stem(3, w[0])
        self.stages = nn.Sequential(*basic_stages(w))
        self.head = nn.Sequential(nn.Linear(w[-1], w[-1]), nn.ReLU(), nn.Linear(w[-1], c.dim))

    @property
    def data_group(self) -> str:
        return self.config.group

    def features(self, images: Tensor) -> Tensor:
        s = self.config.image_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        x = self.stages(self.stem(images * 2 - 1)).mean((-2, -1))
        return F.normalize(self.head(x), dim=-1)

    def _recomposite(self, img: Tensor, mask: Tensor, grey: Tensor) -> Tensor:
        """Images on the trainer's background moved onto grey where ``grey`` (B,) is true."""
        c = self.config
        bg = torch.where(grey, c.grey, c.background).to(img).view(-1, 1, 1, 1)
        return img * mask + bg * (1 - mask)

    def forward(self, batch) -> tuple[Tensor, dict[str, float]]:
        gens = batch.item_generators()
        coins = torch.stack([torch.rand(2, generator=g) < 0.5 for g in gens])  # (B, 2): grey or white per view
        a = batch.context[:, 0]
        if batch.context_mask is not None:
            a = self._recomposite(a, batch.context_mask[:, 0], coins[:, 0].to(a.device))
        b = self._recomposite(batch.query, batch.query_mask, coins[:, 1].to(a.device))
        scene = torch.tensor(batch.scene, device=a.device)
        loss, acc = info_nce(self.features(a), self.features(b), self.config.temperature, scene[:, None] == scene[None])
        return loss, {"infonce": float(loss.detach()), "top1": float(acc)}
