"""Learned models (pixelNeRF, the EFT), registered for ``fewview train`` and ``from_pretrained``."""

from ..pretrained import MODELS
from .eft import EFT, EFTConfig
from .encoder import ResNetEncoder
from .pixelnerf import PixelNeRF, PixelNeRFConfig

__all__ = ["EFT", "MODELS", "EFTConfig", "PixelNeRF", "PixelNeRFConfig", "ResNetEncoder"]
