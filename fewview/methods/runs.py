"""What the per-scene fitters share: scene preparation, the fit loop (resume, progress, history, checkpoints)
and run folders (``config.json`` with the options, input views and cameras; device names)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from ..cameras import Cameras, nearest_point_to_axes
from ..checkpoint import atomic_write_text, environment_info
from ..data import Scene
from ..threads import ThreadGovernor


# --------------------------------------------------------------------- scene prep
def training_images(scene: Scene, background) -> Tensor:
    """Input images composited onto the fit's background (masked objects for masked photos)."""
    if scene.masks is None:
        return scene.images
    return scene.composite(background)


def default_aabb(cams: Cameras) -> Tensor:
    """Box around the point nearest all optical axes, sized by what every camera sees at that point."""
    center = nearest_point_to_axes(cams).float()
    dist = (cams.centers.float() - center).norm(dim=-1)
    half_fov = torch.atan(
        0.5 * torch.minimum(cams.size[:, 0], cams.size[:, 1]).float() / torch.maximum(cams.fx, cams.fy)
    )
    half = float((dist * torch.tan(half_fov)).min()) * 1.05
    return torch.stack([center - half, center + half])


# ------------------------------------------------------------------------ loop
def fit_loop(fitter, desc: str, postfix, progress: bool, callback):
    """The loop of every per-scene fitter: resume, write ``config.json``, step with a progress bar, log
    every 10 steps into ``fitter.history``, checkpoint every ``checkpoint_every`` steps and at the end.
    ``postfix(terms, steps_done, seconds)`` gives the progress bar's fields."""
    from tqdm import tqdm

    cfg = fitter.cfg
    fitter.try_resume()
    if fitter.run_dir is not None:
        write_run_config(fitter.run_dir, cfg, fitter.inputs, fitter.train)
    bar = tqdm(total=cfg.steps, initial=fitter.step, disable=not progress, desc=desc, unit="step", dynamic_ncols=True)
    t0, step0 = time.perf_counter(), fitter.step
    governor = ThreadGovernor()
    try:
        while fitter.step < cfg.steps:
            governor.update()
            terms = fitter.train_step()
            bar.update(1)
            if fitter.step % 10 == 0 or fitter.step == cfg.steps:
                el = time.perf_counter() - t0
                bar.set_postfix(**postfix(terms, fitter.step - step0, el))
                fitter.history.append({"step": fitter.step, "time": el, "threads": governor.threads, **terms})
            if callback is not None:
                callback(fitter)
            if fitter.run_dir is not None and (fitter.step % cfg.checkpoint_every == 0 or fitter.step == cfg.steps):
                fitter.save()
    finally:
        governor.restore()
    bar.close()
    return fitter.state


# ------------------------------------------------------------------ run folders
def write_run_config(run_dir: Path, cfg, inputs: list[int], train: Scene) -> None:
    """``run_dir/config.json``: the fit options, the input views and cameras, the environment."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_json = {
        "fit": asdict(cfg),
        "inputs": inputs,
        "input_frames": train.frames,
        "input_cameras": cameras_to_json(train.cameras),
        "scene": train.name,
        "env": environment_info(),
    }
    atomic_write_text(run_dir / "config.json", json.dumps(cfg_json, indent=1, default=str))


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; any other name is taken as is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cameras_to_json(cams: Cameras) -> dict:
    return {"c2w": cams.c2w.double().tolist(), "K": cams.K.double().tolist(), "size": cams.size.tolist()}


def cameras_from_json(d: dict) -> Cameras:
    return Cameras(torch.tensor(d["c2w"]), torch.tensor(d["K"]), torch.tensor(d["size"]))
