"""Atomic checkpoints as safetensors + JSON (no pickles): model tensors, optimizer state, RNG state.

A checkpoint is a folder. It is written to a temporary sibling and renamed into place, so a
process killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        if name.startswith("opt."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = t
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    folder: str | Path,
    tensors: dict[str, dict[str, Tensor]],
    meta: dict,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write ``<name>.safetensors`` for each entry of ``tensors``, the optimizer and RNG state, and
    ``meta.json``, atomically replacing ``folder``."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, group in tensors.items():
        save_file({k: v.detach().cpu().contiguous() for k, v in group.items()}, str(tmp / f"{name}.safetensors"))
    state: dict[str, Tensor] = {"rng.torch": torch.get_rng_state()}
    meta = dict(meta)
    if optimizer is not None:
        opt_t, opt_meta = _flatten_optimizer(optimizer)
        state.update(opt_t)
        meta["optimizer"] = opt_meta
    meta["rng_numpy"] = [int(v) if isinstance(v, (int, np.integer)) else v for v in _np_state()]
    save_file(state, str(tmp / "trainer.safetensors"))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def find_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint at ``folder``, or None. A process killed between the two renames of
    :func:`save_checkpoint` leaves only ``<folder>.old`` (complete): it is moved back. ``<folder>.tmp`` may be
    half-written and is never read."""
    folder = Path(folder)
    if (folder / "meta.json").is_file():
        return folder
    old = folder.with_name(folder.name + ".old")
    if (old / "meta.json").is_file() and not folder.exists():
        os.replace(old, folder)
        return folder
    return None


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file through a temporary sibling and a rename: readers see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _np_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def read_checkpoint(folder: str | Path) -> tuple[dict[str, dict[str, Tensor]], dict]:
    """The tensors ({name: tensors}) and meta of a checkpoint folder, touching no global state."""
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise FileNotFoundError(f"{folder}: no checkpoint here (meta.json missing)")
    meta = json.loads((folder / "meta.json").read_text())
    groups = {p.stem: load_file(p) for p in folder.glob("*.safetensors") if p.stem != "trainer"}
    return groups, meta


def load_checkpoint(folder: str | Path, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict]:
    """Read a checkpoint folder to resume training: also restores optimizer and RNG state."""
    folder = Path(folder)
    groups, meta = read_checkpoint(folder)
    state = load_file(folder / "trainer.safetensors")
    torch.set_rng_state(state["rng.torch"])
    if "rng_numpy" in meta:
        name, keys, pos, has_gauss, cached = meta["rng_numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if optimizer is not None and "optimizer" in meta:
        _unflatten_optimizer(optimizer, state, meta["optimizer"])
    return groups, meta


def environment_info() -> dict:
    """Versions and machine facts recorded with every run."""
    from . import __version__

    info = {
        "fewview": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join(sys.argv),
    }
    try:
        root = Path(__file__).resolve().parents[1]
        info["commit"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info
