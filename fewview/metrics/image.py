"""Image metrics on (N, 3, H, W) images in [0, 1], already composited on the protocol's background.

PSNR uses a peak of 1. SSIM uses an 11x11 Gaussian window with sigma 1.5 and the usual constants
(K1 = 0.01, K2 = 0.03), valid-region ("no padding") filtering as in skimage/the SSIM paper's code.
Masked variants average only over pixels where ``mask > 0.5``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    """(N,) PSNR in dB; with ``mask`` (N, 1, H, W) the MSE is over masked pixels only."""
    se = (pred - gt).pow(2)
    if mask is None:
        mse = se.flatten(1).mean(1)
    else:
        m = (mask > 0.5).to(se.dtype).expand_as(se)
        mse = (se * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    return -10 * torch.log10(mse.clamp_min(1e-20))


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(pred: Tensor, gt: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """(N, 1, H-window+1, W-window+1) SSIM averaged over channels."""
    c = pred.shape[1]
    w = _gaussian_window(window, sigma, pred.dtype, pred.device).expand(c, 1, window, window)

    def filt(x):
        return F.conv2d(x, w, groups=c)

    mu_x, mu_y = filt(pred), filt(gt)
    sxx = filt(pred * pred) - mu_x**2
    syy = filt(gt * gt) - mu_y**2
    sxy = filt(pred * gt) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean(1, keepdim=True)


def ssim(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    """(N,) mean SSIM; with ``mask`` only windows centred on masked pixels count."""
    s = ssim_map(pred, gt)
    if mask is None:
        return s.flatten(1).mean(1)
    r = (mask.shape[-1] - s.shape[-1]) // 2
    m = (mask[..., r : r + s.shape[-2], r : r + s.shape[-1]] > 0.5).to(s.dtype)
    return (s * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
