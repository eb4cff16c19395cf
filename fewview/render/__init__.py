"""Rendering as stateless functions: volume compositing, samplers, occupancy-grid marching."""

from .image import render_image
from .occupancy import OccupancyGrid, march_rays
from .volume import (
    RenderOutput,
    accumulate,
    alpha_from_density,
    composite,
    composite_packed,
    distortion_loss,
    opacity_entropy_loss,
    ray_aabb,
    sample_pdf,
    sample_stratified,
    segment_starts,
    segmented_exclusive_cumsum,
    transmittance_packed,
    weights_from_alpha,
    weights_packed,
)

__all__ = [
    "OccupancyGrid",
    "RenderOutput",
    "alpha_from_density",
    "accumulate",
    "composite",
    "composite_packed",
    "distortion_loss",
    "march_rays",
    "opacity_entropy_loss",
    "ray_aabb",
    "render_image",
    "sample_pdf",
    "sample_stratified",
    "segment_starts",
    "segmented_exclusive_cumsum",
    "transmittance_packed",
    "weights_from_alpha",
    "weights_packed",
]
