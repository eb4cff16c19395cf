"""The per-scene fit of a field or of Gaussians, by representation: build the fitter, reload a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import find_checkpoint
from ..data import Scene
from .fit import Fitter, load_field_fit
from .fit_config import FitConfig
from .gaussian_fit import GaussianFitter, load_gaussian_fit


def make_fitter(scene: Scene, inputs: list[int], cfg: FitConfig, run_dir: str | Path | None = None):
    """The fitter for ``cfg``: IPSM's or SparseFusion's for their configs, else by representation:
    :class:`Fitter` for fields, :class:`GaussianFitter` for Gaussians."""
    method = getattr(cfg, "method", "")
    if method == "ipsm":
        from .ipsm import IPSMFitter

        return IPSMFitter(scene, inputs, cfg, run_dir)
    if method == "sparsefusion":
        from .sparsefusion import SparseFusionFitter

        return SparseFusionFitter(scene, inputs, cfg, run_dir)
    if cfg.representation == "gaussians":
        return GaussianFitter(scene, inputs, cfg, run_dir)
    return Fitter(scene, inputs, cfg, run_dir)


def load_fit(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a fit from a run folder; returns (state, config.json). The state is a ``FitState``
    (field with its occupancy grid) or a ``GaussianState``; both render a camera with ``state.render``."""
    run_dir = Path(run_dir)
    ck = find_checkpoint(run_dir / "checkpoint")
    if ck is None:
        runs = sorted(p.parent.name for p in run_dir.glob("*/checkpoint"))
        if runs:  # a folder of runs, as `fewview demo` writes
            raise FileNotFoundError(f"{run_dir} holds the runs {', '.join(runs)}: give one of them, e.g. "
                                    f"{run_dir / runs[-1]}")  # fmt: skip
        raise FileNotFoundError(f"{run_dir / 'checkpoint'}: no checkpoint here (meta.json missing)")
    if json.loads((ck / "meta.json").read_text()).get("kind") == "gaussians":
        return load_gaussian_fit(run_dir, device)
    return load_field_fit(run_dir, device)
