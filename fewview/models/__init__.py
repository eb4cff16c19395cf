"""Learned models (pixelNeRF, ...), registered for ``fewview train`` and ``from_pretrained``."""

from ..train.pretrained import MODELS
from .encoder import ResNetEncoder
from .pixelnerf import PixelNeRF, PixelNeRFConfig

__all__ = ["MODELS", "PixelNeRF", "PixelNeRFConfig", "ResNetEncoder"]
