"""DFM as a reconstruction method: sample 3-D scenes from one (or a few) images, render any camera from them.

1. Load the trained DFM (``--dfm-model``, default the shipped ``dfm``); resize the input views to its resolution,
   composited on its background.
2. The target cameras are an orbit around the object derived from the inputs alone (:func:`input_orbit`, about the
   world origin the objects are centred on); evaluation poses are never read.
3. ``oneshot`` (the official "oneshot", used for metrics): one target view ``--dfm-target-angle`` degrees around the
   orbit is denoised (DDIM, dynamic thresholding), and the scene conditioned on the inputs and that view is
   returned. ``autoregressive`` (the paper's 360° results): ``--dfm-orbit`` views around the orbit are sampled in
   order, each conditioned on the inputs and every earlier sample; the last scene is conditioned on all of them.
4. ``--dfm-samples N`` independent scenes (seeds ``--dfm-seed`` + i). Renders are sample 0's, or the per-pixel mean
   (``--dfm-render mean``); the per-pixel variance across the samples is the uncertainty map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field as option

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras, input_orbit
from ..data import Scene
from ..models.dfm import DFMScene, autoregressive

MODES = ("oneshot", "autoregressive")
RENDERS = ("sample", "mean")


@dataclass
class DFMOptions:
    dfm_model: str = option(default="dfm", metadata={"help": "trained DFM (name of a shipped model or a folder)"})
    dfm_samples: int = option(default=1, metadata={"help": "independent scenes to sample"})
    dfm_seed: int = option(default=0, metadata={"help": "seed of sample 0 (sample i uses seed + i)"})
    dfm_steps: int = option(default=50, metadata={"help": "DDIM steps per sampled view"})
    dfm_guidance: float = option(default=1.0, metadata={"help": "classifier-free guidance on x0 (1: off)"})
    dfm_mode: str = option(default="oneshot", metadata={"help": "oneshot | autoregressive"})
    dfm_orbit: int = option(default=6, metadata={"help": "autoregressive: views sampled around the orbit"})
    dfm_target_angle: float = option(default=180.0, metadata={"help": "oneshot: target azimuth from input 0 (deg)"})
    dfm_render: str = option(default="sample", metadata={"help": "sample (scene 0) | mean (of the samples)"})


def model_inputs(model, scene: Scene, inputs: list[int], background=(1.0, 1.0, 1.0)) -> tuple[Tensor, Cameras]:
    """The input views composited on ``background``, resized to the model's training resolution."""
    sel = scene.select(inputs)
    images = sel.composite(background) if sel.masks is not None else sel.images
    size = getattr(model, "image_size", None) or images.shape[-1]
    cams = sel.cameras
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images.float(), size=(size, size), mode="area")
        cams = cams.resize(size, size)
    return images.float(), cams.to(torch.float32)


def target_orbit(cams: Cameras, n: int) -> Cameras:
    """``n`` cameras on the orbit of the inputs about the world origin (the object's centre), starting at input 0.
    The axis is the world's z when the inputs' up vector leans that way (fewview-objects and Blender scenes are
    z-up), else the inputs' own up axis: an orbit about a tilted single camera's up would pass under the object."""
    up = -cams.R[:, :, 1].double().mean(0)
    axis = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) if float(up[2]) > 0.5 * float(up.norm()) else None
    return input_orbit(cams, n, target=torch.zeros(3, dtype=torch.float64), up=axis).to(torch.float32)


class DFMReconstruction:
    """Sampled scenes of one object; ``render(cam)`` gives rgb/depth/opacity (sample 0 or the mean) and
    ``variance`` (1, h, w) across the samples."""

    def __init__(self, scene: Scene, inputs: list[int], opts: DFMOptions, model=None):
        if opts.dfm_mode not in MODES:
            raise ValueError(f"dfm_mode {opts.dfm_mode!r}: choose one of {MODES}")
        if opts.dfm_render not in RENDERS:
            raise ValueError(f"dfm_render {opts.dfm_render!r}: choose one of {RENDERS}")
        if opts.dfm_samples < 1:
            raise ValueError("dfm_samples must be at least 1")
        if model is None:
            from ..pretrained import from_pretrained, resolve_model_dir
            from .recon import model_image_size

            folder = resolve_model_dir(opts.dfm_model)
            model = from_pretrained(folder).eval()
            model.image_size = model_image_size(folder)
        self.model, self.opts = model, opts
        self.images, self.cams = model_inputs(model, scene, inputs)
        self.scenes: list[DFMScene] = []

    def run(self, progress: bool = False) -> DFMReconstruction:
        o = self.opts
        from tqdm import tqdm

        for i in tqdm(range(o.dfm_samples), desc="dfm samples", disable=not progress):
            g = torch.Generator().manual_seed(o.dfm_seed + i)
            if o.dfm_mode == "oneshot":
                n = 360
                k = round(o.dfm_target_angle % 360) % n
                target = target_orbit(self.cams[:1], n)[k : k + 1]
                s = self.model.sample(self.images, self.cams, target, 1, o.dfm_steps, o.dfm_guidance, g)[0]
            else:
                orbit = target_orbit(self.cams[:1], o.dfm_orbit + 1)[1:]
                s = autoregressive(self.model, self.images, self.cams, orbit, o.dfm_steps, g, progress)
            self.scenes.append(s)
        return self

    def render(self, cam: Cameras) -> dict[str, Tensor]:
        outs = [s.render(cam) for s in self.scenes]
        stack = {k: torch.stack([x[k] for x in outs]) for k in outs[0]}
        var = stack["rgb"].var(0, unbiased=len(outs) > 1).mean(0, keepdim=True)
        if self.opts.dfm_render == "mean":
            res = {k: v.mean(0) for k, v in stack.items()}
        else:
            res = dict(outs[0])
        res["variance"] = var
        return res

    def diversity(self, cam: Cameras, mask: Tensor) -> tuple[float, float]:
        """Mean per-pixel standard deviation across samples inside ``mask`` (1, h, w) and outside it."""
        sd = self.render(cam)["variance"].sqrt()
        m = mask.bool()
        inside = float(sd[m].mean()) if m.any() else math.nan
        outside = float(sd[~m].mean()) if (~m).any() else math.nan
        return inside, outside
