"""Scene representations behind one interface (see ``base.Field``)."""

from __future__ import annotations

from .base import Field
from .grid import DenseGridField
from .hashgrid import HashGridField
from .mlp import MLPField

FIELDS = {"DenseGridField": DenseGridField, "HashGridField": HashGridField, "MLPField": MLPField}


def build_field(config: dict) -> Field:
    """Rebuild a field from ``Field.config()``."""
    cfg = dict(config)
    return FIELDS[cfg.pop("type")](**cfg)


__all__ = ["FIELDS", "DenseGridField", "Field", "HashGridField", "MLPField", "build_field"]
