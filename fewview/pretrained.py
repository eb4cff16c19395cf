"""``save_pretrained`` / ``from_pretrained`` folders: ``config.json`` (model name + its config) and
``model.safetensors``.

Models register themselves with :func:`register_model` when their module is imported. Nothing here imports
them: a model's module is found through the ``fewview.models`` entry-point group (fewview's own models are
declared in its ``pyproject.toml``; another package can add its own the same way) and imported on first use."""

from __future__ import annotations

import json
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint import atomic_write_text

MODELS: dict[str, tuple[type, type]] = {}
ENTRY_POINTS = "fewview.models"


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


def save_pretrained(model: nn.Module, folder: str | Path, extra: dict | None = None, dtype: str = "float32") -> Path:
    """Write ``config.json`` + ``model.safetensors``; ``dtype="float16"`` halves the file (floating tensors only;
    :func:`from_pretrained` loads them back into the model's float32 parameters)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    meta = {"model": model.model_name, "config": asdict(cfg) if is_dataclass(cfg) else dict(cfg), **(extra or {})}
    if dtype not in ("float32", "float16"):
        raise ValueError(f"save dtype {dtype!r}: choose float32 or float16")
    cast = getattr(torch, dtype)
    tensors = {k: (v.to(cast) if v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items()}  # fmt: skip
    tmp = folder / "model.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / "model.safetensors")
    atomic_write_text(folder / "config.json", json.dumps(meta, indent=1))
    return folder


def from_pretrained(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder}: not a pretrained model folder (needs config.json and model.safetensors)")
    meta = json.loads((folder / "config.json").read_text())
    try:
        config_cls, cls = model_classes(meta.get("model"))
    except ValueError as e:
        raise ValueError(f"{folder}/config.json: {e}") from None
    model = cls(config_from_dict(config_cls, meta["config"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))  # copies cast float16 files back
    return model.to(device).eval()


def shipped_model_dir(name: str) -> Path:
    """Folder of a checkpoint shipped with fewview (``fewview/assets/models/NAME``)."""
    return Path(__file__).resolve().parent / "assets" / "models" / name


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A pretrained folder given as a path, or by the name of a shipped checkpoint."""
    p = Path(name_or_path)
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return p
    shipped = shipped_model_dir(str(name_or_path))
    if str(name_or_path) and "/" not in str(name_or_path) and (shipped / "config.json").is_file():
        return shipped
    raise FileNotFoundError(f"{name_or_path}: neither a pretrained model folder nor a shipped model name")


def _providers(name: str | None = None) -> list:
    from importlib.metadata import entry_points

    eps = entry_points(group=ENTRY_POINTS)
    return [ep for ep in eps if name is None or ep.name == name]


def model_classes(name: str) -> tuple[type, type]:
    """(config class, model class) of model ``name``, importing its module when it is not registered yet."""
    if name not in MODELS:
        for ep in _providers(name):
            ep.load()  # importing the module registers the model
    if name not in MODELS:
        known = sorted(available_models())
        raise ValueError(f"unknown model {name!r}; known: {known} (a built-in one missing: reinstall fewview)")
    return MODELS[name]


def available_models() -> dict[str, tuple[type, type]]:
    """Every model registered or declared under the ``fewview.models`` entry points, imported."""
    for ep in _providers():
        if ep.name not in MODELS:
            ep.load()
    return MODELS
