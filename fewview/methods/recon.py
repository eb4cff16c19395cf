"""Novel views from a trained generalizable model (pixelNeRF, EFT) on any scene, evaluated on a named
protocol like the per-scene fits; and SparseFusion's mean-seeking baseline (Table 5): a field fitted to
the model's renders on the SparseFusion trajectory plus the input views."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from ..cameras import Cameras, sparsefusion_trajectory
from ..checkpoint import environment_info
from ..data import Scene
from ..evaluation import evaluate_views, nan_to_none, to_uint8, write_report
from ..pretrained import from_pretrained
from .fit import Fitter
from .fit_config import SPARSE_PRESET, FitConfig
from .protocol_run import evaluation_targets, peak_memory_mb, protocol_scenes


def input_images(model, inputs: Scene, background) -> Tensor:
    """The input views as the model reads them: composited on its input background when it has one (the LRM reads
    inputs on grey), else on ``background``."""
    bg = getattr(getattr(model, "config", None), "input_background", None)
    bg = (bg, bg, bg) if bg is not None else background
    return inputs.composite(bg) if inputs.masks is not None else inputs.images


def model_image_size(model_dir: str | Path) -> int | None:
    meta = json.loads((Path(model_dir) / "config.json").read_text())
    return meta.get("image_size")


class ModelRenderer:
    """``render(cam)`` -> rgb/depth/opacity of a model conditioned on fixed context views. Context images
    are resized to the model's training size; targets render at their own resolution."""

    def __init__(self, model, images: Tensor, cams: Cameras, size: int | None = None):
        self.model = model
        if size is not None and images.shape[-2:] != (size, size):
            images = torch.nn.functional.interpolate(images, size=(size, size), mode="area")
            cams = cams.resize(size, size)
        self.images, self.cams = images.float(), cams

    def __call__(self, cam: Cameras) -> dict[str, Tensor]:
        out = self.model.render(self.images, self.cams, cam[:1])
        h, w = out["rgb"].shape[-2:]
        out.setdefault("depth", torch.zeros(1, h, w))
        out.setdefault("opacity", torch.ones(1, h, w))
        return out


def mean_seeking_fit(render: ModelRenderer, inputs: Scene, background, steps: int = 1000, n_path: int = 50,
                     seed: int = 0, progress: bool = False):  # fmt: skip
    """Fit the per-scene field to the model's renders on SparseFusion's trajectory (50 cameras, +-0.17 rad
    elevation jitter) and to the real input views."""
    g = torch.Generator().manual_seed(seed)
    path = sparsefusion_trajectory(inputs.cameras, n_path, 0.17, generator=g)
    imgs = torch.stack([render(path[i])["rgb"] for i in range(len(path))])
    real = inputs.composite(background)
    both = Scene(
        images=torch.cat([real, imgs]),
        cameras=Cameras.cat([inputs.cameras.to(torch.float64), path.to(torch.float64)]),
        background="photo",
        name=f"{inputs.name}+model-renders",
        frames=list(inputs.frames) + [f"render_{i}" for i in range(len(path))],
    )
    cfg = FitConfig(**{**SPARSE_PRESET, "w_silhouette": 0.0}, steps=steps, upsample_step=steps // 3,
                    use_masks=False, background=tuple(background))  # fmt: skip
    fitter = Fitter(both, list(range(len(both))), cfg, None)
    return fitter.run(progress=progress)


def run_recon_protocol(scene_path: str | Path, protocol: str, out_dir: str | Path, model_dir: str | Path,
                       mean_seeking: bool = False, fit_steps: int = 1000, progress: bool = True, lpips: bool = True,
                       lpips_weights=None, background=(1.0, 1.0, 1.0), downscale: float = 1.0,
                       make_render=None, method: str | None = None) -> dict:  # fmt: skip
    """Render the protocol's evaluation views with the model (or the mean-seeking field) from its inputs;
    writes ``metrics.json``, ``report.html`` and renders like :func:`run_protocol`. ``make_render(inputs_scene,
    input_ids)`` replaces the model's own renderer (DFM's sampled scenes), named ``method``."""
    out = Path(out_dir)
    t0 = time.perf_counter()
    inputs_scene, eval_scene, split = protocol_scenes(scene_path, protocol, downscale)
    inputs = inputs_scene.select(list(split.inputs))
    ctx = inputs.composite(background) if inputs.masks is not None else inputs.images
    if make_render is not None:
        render = make_render(inputs_scene, list(split.inputs))
    else:
        model = from_pretrained(model_dir)
        render = ModelRenderer(model, input_images(model, inputs, background), inputs.cameras,
                               model_image_size(model_dir))  # fmt: skip
        method = model.model_name
    if mean_seeking:
        state = mean_seeking_fit(render, inputs, background, fit_steps, progress=progress)
        render_fn, method = state.render, f"{method}-mean-seeking-fit"
    else:
        render_fn = render
    gt, masks = evaluation_targets(eval_scene, split.evaluation, background)
    ev = eval_scene.select(list(split.evaluation))
    names = [Path(f).stem for f in ev.frames]
    result = evaluate_views(render_fn, ev.cameras, gt, inputs.cameras, masks, out, names, lpips, progress,
                            lpips_weights)  # fmt: skip
    (out / "renders").mkdir(parents=True, exist_ok=True)
    input_files = []
    for i, name in enumerate(Path(f).stem for f in inputs.frames):
        Image.fromarray(to_uint8(ctx[i])).save(out / "renders" / f"input_{name}.png")
        input_files.append(f"renders/input_{name}.png")
    record = {
        "protocol": split.protocol, "method": method, "model": str(model_dir), "scene": str(scene_path),
        "input_views": list(split.inputs), "evaluation_views": list(split.evaluation),
        "background": list(background), "resolution": [eval_scene.height, eval_scene.width],
        "means": result["means"], "binned": result["binned"], "per_view": result["per_view"],
        "wall_seconds": time.perf_counter() - t0, "peak_memory_mb": peak_memory_mb(), "env": environment_info(),
    }  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(nan_to_none(record), indent=1))
    info = {k: record[k] for k in ("protocol", "method", "model", "scene", "input_views", "background", "resolution")}
    write_report(out, result, f"{method} on {protocol} ({Path(scene_path).name})", input_files, info)
    return record


def recon_views(model_dir: str | Path, scene: Scene, views: list[int], background=(1.0, 1.0, 1.0)) -> ModelRenderer:
    """A renderer for ``scene`` conditioned on its ``views`` (any camera can then be rendered)."""
    model = from_pretrained(model_dir)
    inputs = scene.select(views)
    return ModelRenderer(model, input_images(model, inputs, background), inputs.cameras, model_image_size(model_dir))
