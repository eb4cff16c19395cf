"""Metrics owned by fewview: PSNR, SSIM (and masked variants), LPIPS (AlexNet/VGG, v0.1)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from .geometry import chamfer_distance, nearest_distances, sample_mesh_surface
from .image import psnr, ssim, ssim_map
from .lpips import LPIPS, PerceptualLoss, lpips_metric
from .lpips_weights import WeightsError, find_lpips_weights


def image_metrics(
    pred: Tensor,
    gt: Tensor,
    mask: Tensor | None = None,
    lpips: bool = True,
    lpips_weights: str | Path | None = None,
) -> dict:
    """Per-image metrics for (N, 3, H, W) images in [0, 1] composited on the same background.

    Returns a dict of lists: ``psnr``, ``ssim``, ``lpips_alex`` (when ``lpips``), and with ``mask``
    also ``psnr_masked`` and ``ssim_masked``. When the LPIPS weights cannot be found the dict holds
    ``lpips_alex: None`` and ``lpips_unavailable: <reason>`` -- never a made-up number.
    """
    out: dict = {"psnr": psnr(pred, gt).tolist(), "ssim": ssim(pred, gt).tolist()}
    if mask is not None:
        out["psnr_masked"] = psnr(pred, gt, mask).tolist()
        out["ssim_masked"] = ssim(pred, gt, mask).tolist()
    if lpips:
        try:
            out["lpips_alex"] = lpips_metric(pred, gt, "alex", lpips_weights).tolist()
        except WeightsError as e:
            out["lpips_alex"] = None
            out["lpips_unavailable"] = str(e)
    return out


def format_metrics(means: dict) -> str:
    """One line like ``PSNR 24.31  SSIM 0.912  LPIPS 0.081`` (or ``LPIPS: unavailable (reason)``)."""
    parts = [f"PSNR {means['psnr']:.2f}", f"SSIM {means['ssim']:.3f}"]
    if means.get("lpips_alex") is not None:
        parts.append(f"LPIPS {means['lpips_alex']:.3f}")
    elif "lpips_unavailable" in means:
        parts.append(f"LPIPS: unavailable ({means['lpips_unavailable']})")
    return "  ".join(parts)


__all__ = [
    "LPIPS",
    "PerceptualLoss",
    "WeightsError",
    "chamfer_distance",
    "find_lpips_weights",
    "format_metrics",
    "image_metrics",
    "lpips_metric",
    "nearest_distances",
    "psnr",
    "ssim",
    "sample_mesh_surface",
    "ssim_map",
]
