"""Training infrastructure shared by every learned model: data sampling, DDP, EMA, checkpoints,
``save_pretrained`` folders and the :class:`Trainer` loop behind ``fewview train``."""

from ..pretrained import MODELS, from_pretrained, register_model, save_pretrained
from .data import Batch, CO3DSource, ObjectsSource, SingleViewSource, item_generator, sample_batch
from .distributed import DistInfo, init_distributed, launched_by_torchrun, shutdown
from .ema import EMA
from .trainer import TrainConfig, Trainer, lr_lambda, make_source

__all__ = [
    "EMA",
    "MODELS",
    "Batch",
    "CO3DSource",
    "DistInfo",
    "ObjectsSource",
    "SingleViewSource",
    "TrainConfig",
    "Trainer",
    "from_pretrained",
    "init_distributed",
    "item_generator",
    "launched_by_torchrun",
    "lr_lambda",
    "make_source",
    "register_model",
    "sample_batch",
    "save_pretrained",
    "shutdown",
]
