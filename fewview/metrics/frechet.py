"""A Fréchet distance between two sets of images on the AlexNet features fewview already has (the LPIPS trunk).

This is *not* FID: FID is defined on Inception-v3 features, whose weights cannot be had here. It is the same
formula, ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), on global-average-pooled AlexNet conv5 features (256-d),
named "FD-AlexNet" wherever it is reported. Absolute values do not compare with published FIDs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def _sqrt_psd(m: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (N, D) and ``b`` (M, D)."""
    a, b = a.double(), b.double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    r1 = _sqrt_psd(s1)
    cross = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross)


@torch.no_grad()
def alexnet_features(images: Tensor, weights: str | Path | None = None, batch_size: int = 32) -> Tensor:
    """(N, 256) global-average-pooled conv5 features of images (N, 3, H, W) in [0, 1] (LPIPS' AlexNet trunk)."""
    from .lpips import LPIPS

    net = LPIPS("alex", weights).eval()
    out = []
    for i in range(0, len(images), batch_size):
        out.append(net.features(images[i : i + batch_size] * 2 - 1)[-1].mean((-2, -1)))
    return torch.cat(out)


def fd_alexnet(x: Tensor, y: Tensor, weights: str | Path | None = None) -> float:
    """FD-AlexNet between two image sets (N, 3, H, W) in [0, 1]."""
    return frechet_distance(alexnet_features(x, weights), alexnet_features(y, weights))
