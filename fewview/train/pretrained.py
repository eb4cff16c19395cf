"""``save_pretrained`` / ``from_pretrained`` folders: ``config.json`` (model name + its config) and
``model.safetensors``. Models register themselves with :func:`register_model`."""

from __future__ import annotations

import json
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

MODELS: dict[str, tuple[type, type]] = {}


def register_model(name: str, config_cls: type):
    """Class decorator: ``@register_model("pixelnerf", PixelNeRFConfig)``; the class takes ``(config)``."""

    def wrap(cls):
        MODELS[name] = (config_cls, cls)
        cls.model_name = name
        return cls

    return wrap


def config_from_dict(config_cls: type, d: dict):
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} fields {unknown}")
    conv = {}
    for f in fields(config_cls):
        if f.name in d:
            v = d[f.name]
            conv[f.name] = tuple(v) if isinstance(v, list) else v
    return config_cls(**conv)


def save_pretrained(model: nn.Module, folder: str | Path, extra: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    meta = {"model": model.model_name, "config": asdict(cfg) if is_dataclass(cfg) else dict(cfg), **(extra or {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / "model.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(meta, indent=1))
    return folder


def from_pretrained(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder}: not a pretrained model folder (needs config.json and model.safetensors)")
    meta = json.loads((folder / "config.json").read_text())
    _ensure_registered()
    if meta.get("model") not in MODELS:
        raise ValueError(f"{folder}/config.json: unknown model {meta.get('model')!r}; known: {sorted(MODELS)}")
    config_cls, cls = MODELS[meta["model"]]
    model = cls(config_from_dict(config_cls, meta["config"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.to(device).eval()


def _ensure_registered() -> None:
    from .. import models  # noqa: F401  (registers the built-in models)
