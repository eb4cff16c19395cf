"""Run a method on a named protocol: pick the views, fit, evaluate, write metrics.json and report.html."""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path

import torch
from PIL import Image

from ..checkpoint import environment_info
from ..data import Scene, ViewSplit, get_protocol, load_blender, load_scene
from ..evaluation import evaluate_views, nan_to_none, to_uint8, write_report
from .fit_config import FitConfig
from .runs import cameras_from_json, cameras_to_json, training_images
from .scene_fit import make_fitter

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def protocol_scenes(scene_path: str | Path, protocol: str, downscale: float = 1.0) -> tuple[Scene, Scene, ViewSplit]:
    """(scene the inputs index, scene the evaluation views index, split) for a named protocol."""
    fn = get_protocol(protocol)
    if protocol.startswith("lego-") or protocol.startswith("blender-split"):
        train = load_blender(scene_path, "train", downscale=downscale)
        split = fn(len(train)) if not protocol.startswith("blender-split") else None
        test = load_blender(scene_path, split.eval_split if split else "test", downscale=downscale)
        return train, test, split or fn(len(train), len(test))
    if protocol.startswith("objects-"):
        raise ValueError(f"{protocol} runs over a fewview-objects dataset; give it an object folder index instead")
    scene = load_scene(scene_path, downscale=downscale)
    return scene, scene, fn(len(scene))


def evaluation_targets(scene: Scene, idx: tuple[int, ...], background) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ground truth composited on the protocol background, and masks for masked metrics (photos only)."""
    sub = scene.select(list(idx))
    gt = sub.composite(background)
    masks = sub.masks if (sub.masks is not None and scene.background == "photo") else None
    return gt, masks


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_protocol(
    scene_path: str | Path,
    protocol: str,
    out_dir: str | Path,
    cfg: FitConfig | None = None,
    downscale: float = 1.0,
    progress: bool = True,
    lpips: bool = True,
    refit: bool = False,
    lpips_weights: str | Path | None = None,
) -> dict:
    """Fit the per-scene field on the protocol's inputs (resuming a fit already in ``out_dir`` unless
    ``refit``) and evaluate on its evaluation views. Writes ``metrics.json`` and ``report.html``."""
    cfg = cfg or FitConfig()
    out = Path(out_dir)
    t0 = time.perf_counter()
    inputs_scene, eval_scene, split = protocol_scenes(scene_path, protocol, downscale)
    if refit and (out / "checkpoint").exists():
        shutil.rmtree(out / "checkpoint")
    fitter = make_fitter(inputs_scene, list(split.inputs), cfg, out)
    state = fitter.run(progress=progress)
    fit_seconds = time.perf_counter() - t0
    gt, masks = evaluation_targets(eval_scene, split.evaluation, cfg.background)
    eval_sub = eval_scene.select(list(split.evaluation))
    eval_cams, names = eval_sub.cameras, [Path(f).stem for f in eval_sub.frames]
    result = evaluate_views(
        state.render, eval_cams, gt, fitter.train.cameras, masks, out, names, lpips, progress, lpips_weights
    )
    # Input thumbnails for the report.
    (out / "renders").mkdir(parents=True, exist_ok=True)
    inputs_img = training_images(fitter.train, torch.tensor(cfg.background))
    input_files = []
    for i, name in enumerate(Path(f).stem for f in fitter.train.frames):
        Image.fromarray(to_uint8(inputs_img[i])).save(out / "renders" / f"input_{name}.png")
        input_files.append(f"renders/input_{name}.png")
    record = {
        "protocol": split.protocol,
        "method": getattr(cfg, "method", "") or f"fit-{cfg.representation}",
        "scene": str(scene_path),
        "input_views": list(split.inputs),
        "input_split": split.input_split,
        "evaluation_views": list(split.evaluation),
        "evaluation_names": names,
        "evaluation_cameras": cameras_to_json(eval_cams),
        "eval_split": split.eval_split,
        "background": list(cfg.background),
        "resolution": [eval_scene.height, eval_scene.width],
        "means": result["means"],
        "binned": result["binned"],
        "per_view": result["per_view"],
        "fit_seconds": fit_seconds,
        "wall_seconds": time.perf_counter() - t0,
        "peak_memory_mb": peak_memory_mb(),
        "steps": cfg.steps,
        "env": environment_info(),
    }
    if getattr(fitter, "timings", None):  # a prior-guided fit's seconds per phase (this process's steps)
        record["timings"] = dict(fitter.timings)
    (out / "metrics.json").write_text(json.dumps(nan_to_none(record), indent=1))
    write_report(
        out,
        result,
        f"{record['method']} on {protocol} ({Path(scene_path).name})",
        input_files,
        {
            k: record[k]
            for k in ("protocol", "method", "scene", "input_views", "background", "resolution", "fit_seconds", "steps")
        },
    )
    return record


def input_cameras(config: dict):
    """Input cameras recorded in a run folder's config.json."""
    return cameras_from_json(config["input_cameras"])
