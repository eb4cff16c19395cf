"""Per-scene radiance-field fitting: the "no prior" baseline and the field every distillation optimises.

Recipe (defaults measured on a 2-core CPU, see docs/fields.md): a DVGO-style dense grid (density +
12 colour features, 64^3 growing to 128^3), a 2x64 colour MLP with SH view directions, Adam,
uniform ray marching in steps of half a final voxel through an occupancy grid that starts as the
visual hull of the input masks (when there are masks) and is re-estimated from density; density is
evaluated only in occupied cells and colour only where a sample's weight exceeds 1e-4.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from dataclasses import field as option
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras, camera_rays, nearest_point_to_axes
from ..checkpoint import atomic_write_text, environment_info, find_checkpoint, load_checkpoint, save_checkpoint
from ..data import Scene
from ..fields import DenseGridField, Field, HashGridField, MLPField, build_field
from ..render import OccupancyGrid, RenderOutput, distortion_loss, march_rays, opacity_entropy_loss, render_image


@dataclass
class FitConfig:
    """Hyperparameters of a per-scene fit (every field becomes a ``fewview fit`` option)."""

    representation: str = option(default="grid", metadata={"help": "grid | hashgrid | mlp | gaussians"})
    steps: int = option(default=3000, metadata={"help": "optimisation steps"})
    batch_rays: int = option(default=4096, metadata={"help": "rays per step"})
    lr_grid: float = option(
        default=0.0, metadata={"help": "learning rate of grid/table parameters (0: grid 0.1, hashgrid 0.01)"}
    )
    lr_net: float = option(default=0.0, metadata={"help": "learning rate of MLP parameters (0: 1e-3, mlp 5e-4)"})
    lr_decay: float = option(default=0.1, metadata={"help": "learning-rate factor reached at the last step"})
    grid_res: int = option(default=64, metadata={"help": "initial grid resolution (grid field)"})
    grid_res_final: int = option(default=128, metadata={"help": "grid resolution after upsampling (grid field)"})
    upsample_step: int = option(default=500, metadata={"help": "step at which the grid is upsampled"})
    init_alpha: float = option(default=1e-2, metadata={"help": "initial opacity of one march step"})
    step_voxels: float = option(default=0.5, metadata={"help": "march step in voxels of the final grid"})
    occupancy_res: int = option(default=128, metadata={"help": "occupancy grid resolution"})
    occupancy_every: int = option(default=200, metadata={"help": "re-estimate occupancy every N steps (0: never)"})
    occupancy_warmup: int = option(default=400, metadata={"help": "first step at which occupancy is re-estimated"})
    use_masks: bool = option(default=True, metadata={"help": "carve the occupancy grid with the input masks"})
    background: tuple[float, float, float] = option(default=(1.0, 1.0, 1.0), metadata={"help": "background RGB"})
    w_silhouette: float = option(default=0.0, metadata={"help": "weight of opacity-vs-mask loss"})
    w_entropy: float = option(default=0.0, metadata={"help": "weight of opacity entropy loss"})
    w_distortion: float = option(default=0.0, metadata={"help": "weight of Mip-NeRF 360 distortion loss"})
    w_rgb_per_sample: float = option(default=0.0, metadata={"help": "weight of sum_i w_i |c_i - C|^2 (DVGO)"})
    w_tv: float = option(default=0.0, metadata={"help": "weight of density total variation (grid field)"})
    w_depth_smooth: float = option(default=0.0, metadata={"help": "weight of depth smoothness on 4x4 patches"})
    w_perceptual: float = option(
        default=0.0, metadata={"help": "weight of LPIPS-alex on a random image patch per step"}
    )
    perceptual_patch: int = option(default=32, metadata={"help": "side of that patch in pixels (LPIPS needs >= 32)"})
    perceptual_weights: str = option(default="", metadata={"help": "LPIPS weights path (default: env/cache)"})
    device: str = option(default="cpu", metadata={"help": "cpu, cuda, cuda:N, or auto (cuda when available)"})
    checkpoint_every: int = option(default=500, metadata={"help": "write a checkpoint every N steps"})
    seed: int = option(default=0, metadata={"help": "random seed"})
    # 3D Gaussians (representation=gaussians); defaults from 3DGS, schedule shortened for CPU budgets.
    gs_init: str = option(
        default="auto", metadata={"help": "auto | hull | random | a 3DGS .ply | a field run folder (its depth points)"}
    )
    gs_num_init: int = option(default=20000, metadata={"help": "initial Gaussians (hull/random/field init)"})
    gs_sh_degree: int = option(default=3, metadata={"help": "maximum SH degree (0-3)"})
    gs_sh_every: int = option(default=500, metadata={"help": "raise the SH degree every N steps"})
    gs_lr_means: float = option(default=1.6e-4, metadata={"help": "centre learning rate x scene extent (start)"})
    gs_lr_means_final: float = option(default=1.6e-6, metadata={"help": "centre learning rate at the last step"})
    gs_lr_scales: float = option(default=5e-3, metadata={"help": "log-scale learning rate"})
    gs_lr_quats: float = option(default=1e-3, metadata={"help": "quaternion learning rate"})
    gs_lr_opacity: float = option(default=5e-2, metadata={"help": "opacity-logit learning rate"})
    gs_lr_sh: float = option(default=2.5e-3, metadata={"help": "SH DC learning rate (higher bands: / 20)"})
    gs_ssim_weight: float = option(default=0.2, metadata={"help": "weight of 1 - SSIM against L1"})
    gs_refine_start: int = option(default=500, metadata={"help": "first densification step"})
    gs_refine_stop: int = option(default=0, metadata={"help": "no densification from this step on (0: steps / 2)"})
    gs_refine_every: int = option(default=100, metadata={"help": "densify every N steps"})
    gs_reset_every: int = option(
        default=3000, metadata={"help": "reset opacities every N steps while densifying (0: never)"}
    )
    gs_grad_threshold: float = option(default=2e-4, metadata={"help": "densify above this mean NDC gradient"})
    gs_max_gaussians: int = option(default=1_000_000, metadata={"help": "densification stops adding here"})
    gs_w_opacity: float = option(default=0.0, metadata={"help": "weight of the mean opacity (sparsity) loss"})
    gs_hull_prune: bool = option(
        default=False, metadata={"help": "remove Gaussians outside the input masks' visual hull (sparse views)"}
    )
    gs_backend: str = option(default="auto", metadata={"help": "rasterizer: auto | numba | torch | gsplat"})


# Measured on lego-3view at 64x64 (400 steps, test PSNR): plain 13.06, + silhouette 12.76,
# + silhouette + TV 0.01 13.82 (best), + distortion and entropy 0.01 13.71.
SPARSE_PRESET = dict(
    grid_res=48,
    grid_res_final=96,
    w_rgb_per_sample=0.1,
    w_entropy=1e-3,
    w_silhouette=1.0,
    w_tv=1e-2,
)


# Gaussians from 3 views. Measured on lego-3view (1500 steps, test PSNR): silhouette + hull pruning 10.75;
# + opacity loss 0.01 13.14; + opacity reset at step 500 13.55; opacity loss 0.05 / 0.2 / 0.5 / 1.0:
# 14.77 / 15.76 / 16.20 / 16.60. Chosen on lego; mary_rose (llff-3view) is the held-out check.
GAUSSIAN_SPARSE_PRESET = dict(
    representation="gaussians", w_silhouette=1.0, gs_hull_prune=True, gs_w_opacity=1.0, gs_reset_every=500
)


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


def shrink_to_occupied(occ: OccupancyGrid, margin_cells: int = 2) -> Tensor:
    """The box of occupied cells (plus a margin) inside the grid's box."""
    idx = occ.occupied.nonzero()
    if len(idx) == 0:
        return occ.aabb.clone()
    cell = (occ.aabb[1] - occ.aabb[0]) / occ.res
    lo = occ.aabb[0] + (idx.amin(0) - margin_cells).clamp_min(0) * cell
    hi = occ.aabb[0] + (idx.amax(0) + 1 + margin_cells).clamp(max=occ.res) * cell
    return torch.stack([lo, hi])


def make_field(cfg: FitConfig, aabb: Tensor, step: float) -> Field:
    if cfg.representation == "grid":
        return DenseGridField(aabb, resolution=cfg.grid_res, step=step, init_alpha=cfg.init_alpha)
    if cfg.representation == "hashgrid":
        return HashGridField(aabb, step=step, init_alpha=cfg.init_alpha)
    if cfg.representation == "mlp":
        return MLPField(aabb)
    raise ValueError(f"unknown field {cfg.representation!r}: choose grid, hashgrid or mlp")


def make_optimizer(f: Field, cfg: FitConfig) -> torch.optim.Optimizer:
    """Adam (fused kernel where this torch build has one: ~8x faster on large grids on CPU)."""
    try:
        return torch.optim.Adam(param_groups(f, cfg), betas=(0.9, 0.99), eps=1e-15, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(param_groups(f, cfg), betas=(0.9, 0.99), eps=1e-15)


DEFAULT_LR_GRID = {"grid": 0.1, "hashgrid": 1e-2}
DEFAULT_LR_NET = {"grid": 1e-3, "hashgrid": 1e-3, "mlp": 5e-4}


def param_groups(f: Field, cfg: FitConfig) -> list[dict]:
    grids = [p for n, p in f.named_parameters() if n in ("density_grid", "feature_grid", "tables")]
    nets = [p for n, p in f.named_parameters() if n not in ("density_grid", "feature_grid", "tables")]
    lr_grid = cfg.lr_grid or DEFAULT_LR_GRID.get(cfg.representation, 0.1)
    lr_net = cfg.lr_net or DEFAULT_LR_NET.get(cfg.representation, 1e-3)
    groups = [{"params": grids, "lr": lr_grid, "initial_lr": lr_grid, "name": "grid"}] if grids else []
    return groups + [{"params": nets, "lr": lr_net, "initial_lr": lr_net, "name": "net"}]


# ------------------------------------------------------------------------ fitter
@dataclass
class FitState:
    field: Field
    occupancy: OccupancyGrid
    step_size: float
    background: Tensor

    def render_rays(self, origins: Tensor, directions: Tensor, perturb: bool = False, generator=None) -> RenderOutput:
        return march_rays(
            self.field,
            origins,
            directions,
            self.field.aabb,
            self.step_size,
            self.occupancy,
            self.background,
            perturb=perturb,
            generator=generator,
        )

    def render(self, cam: Cameras, chunk: int = 16384) -> dict[str, Tensor]:
        self.field.eval()
        return render_image(lambda o, d: self.render_rays(o, d), cam, chunk, device=self.field.aabb.device)


class Fitter:
    """Fits a field to the input views of a scene, writing a run folder (see :meth:`run`)."""

    def __init__(self, scene: Scene, inputs: list[int], cfg: FitConfig, run_dir: str | Path | None = None):
        self.cfg = cfg
        self.inputs = list(inputs)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        train = scene.select(self.inputs)
        self.train = train
        bg = torch.tensor(cfg.background, dtype=torch.float32)
        imgs = training_images(train, bg)
        rays = camera_rays(train.cameras, dtype=torch.float32)
        self.origins = rays.origins.reshape(-1, 3)
        self.dirs = rays.directions.reshape(-1, 3)
        self.rgb = imgs.permute(0, 2, 3, 1).reshape(-1, 3).float()
        self.mask = None if train.masks is None else train.masks.permute(0, 2, 3, 1).reshape(-1).float()
        self.hw = (train.height, train.width)

        aabb = scene.bounds.float() if scene.bounds is not None else default_aabb(train.cameras)
        occ = OccupancyGrid(aabb, cfg.occupancy_res)
        self.hull = None  # visual hull of the input masks: occupancy never leaves it
        if cfg.use_masks and train.masks is not None:
            occ.carve_with_masks(train.cameras, train.masks)
            aabb = shrink_to_occupied(occ)
            occ = OccupancyGrid(aabb, cfg.occupancy_res)
            occ.carve_with_masks(train.cameras, train.masks)
            self.hull = occ.occupied.clone()
        extent = float((aabb[1] - aabb[0]).max())
        step = cfg.step_voxels * extent / (cfg.grid_res_final if cfg.representation == "grid" else cfg.occupancy_res)
        dev = resolve_device(cfg.device)
        self.device = dev
        self.origins, self.dirs, self.rgb = self.origins.to(dev), self.dirs.to(dev), self.rgb.to(dev)
        self.mask = None if self.mask is None else self.mask.to(dev)
        self.hull = None if self.hull is None else self.hull.to(dev)
        occ.to(dev)
        self.state = FitState(make_field(cfg, aabb, step).to(dev), occ, step, bg.to(dev))
        self.opt = make_optimizer(self.state.field, cfg)
        self.step = 0
        self.history: list[dict] = []

    # -------------------------------------------------------------- checkpoints
    def save(self) -> None:
        if self.run_dir is None:
            return
        st = self.state
        meta = {
            "step": self.step,
            "field": st.field.config(),
            "step_size": st.step_size,
            "background": st.background.tolist(),
            "history": self.history,
        }
        save_checkpoint(
            self.run_dir / "checkpoint",
            {
                "field": st.field.state_dict(),
                "occupancy": st.occupancy.state_dict(),
                "sampler": {"generator": self.gen.get_state()},
            },
            meta,
            self.opt,
        )

    def try_resume(self) -> bool:
        ck = None if self.run_dir is None else find_checkpoint(self.run_dir / "checkpoint")
        if ck is None:
            return False
        meta = json.loads((ck / "meta.json").read_text())
        f = build_field(meta["field"]).to(self.device)
        self.state.field = f
        self.opt = make_optimizer(f, self.cfg)
        groups, meta = load_checkpoint(ck, self.opt)
        f.load_state_dict(groups["field"])
        self.state.occupancy.load_state_dict(groups["occupancy"])
        self.state.occupancy.to(self.device)
        self.gen.set_state(groups["sampler"]["generator"])
        self.state.step_size = meta["step_size"]
        self.step = meta["step"]
        self.history = meta.get("history", [])
        return True

    # -------------------------------------------------------------------- loop
    def sample_batch(self) -> Tensor:
        n = self.cfg.batch_rays
        if self.cfg.w_depth_smooth > 0:
            return self._patch_batch(n)
        return torch.randint(0, len(self.origins), (n,), generator=self.gen)

    def _patch_batch(self, n: int, size: int = 4) -> Tensor:
        """Ray indices of n // size^2 random size x size patches (ordered patch by patch, row-major)."""
        h, w = self.hw
        k = max(n // (size * size), 1)
        v = torch.randint(0, len(self.inputs), (k,), generator=self.gen)
        y = torch.randint(0, h - size + 1, (k,), generator=self.gen)
        x = torch.randint(0, w - size + 1, (k,), generator=self.gen)
        dy, dx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        return ((v[:, None] * h + y[:, None] + dy.reshape(1, -1)) * w + x[:, None] + dx.reshape(1, -1)).reshape(-1)

    def losses(self, idx: Tensor) -> tuple[Tensor, dict[str, float], RenderOutput]:
        cfg, st = self.cfg, self.state
        out = st.render_rays(self.origins[idx], self.dirs[idx], perturb=True, generator=self.gen)
        mse = F.mse_loss(out.rgb, self.rgb[idx])
        loss = mse
        terms = {"mse": float(mse.detach())}
        if cfg.w_silhouette > 0 and self.mask is not None:
            sil = F.mse_loss(out.opacity, self.mask[idx])
            loss = loss + cfg.w_silhouette * sil
            terms["silhouette"] = float(sil.detach())
        if cfg.w_rgb_per_sample > 0 and out.sample_rgb is not None:
            err = (out.sample_rgb - self.rgb[idx][out.ray_indices]).pow(2).sum(-1)
            per = (out.weights * err).sum() / len(idx)
            loss = loss + cfg.w_rgb_per_sample * per
            terms["rgb_per_sample"] = float(per.detach())
        if cfg.w_entropy > 0:
            ent = opacity_entropy_loss(out.opacity).mean()
            loss = loss + cfg.w_entropy * ent
            terms["entropy"] = float(ent.detach())
        if cfg.w_distortion > 0:
            dist = distortion_loss(out).mean()
            loss = loss + cfg.w_distortion * dist
            terms["distortion"] = float(dist.detach())
        if cfg.w_tv > 0 and isinstance(st.field, DenseGridField):
            tv = st.field.total_variation(generator=self.gen)
            loss = loss + cfg.w_tv * tv
            terms["tv"] = float(tv.detach())
        if cfg.w_depth_smooth > 0:
            d = (out.depth / out.opacity.clamp_min(1e-3)).reshape(-1, 4, 4)
            ds = ((d[:, 1:] - d[:, :-1]) ** 2).mean() + ((d[:, :, 1:] - d[:, :, :-1]) ** 2).mean()
            loss = loss + cfg.w_depth_smooth * ds
            terms["depth_smooth"] = float(ds.detach())
        if cfg.w_perceptual > 0:
            p = min(cfg.perceptual_patch, *self.hw)
            pidx = self._patch_batch(p * p, p)
            pout = st.render_rays(self.origins[pidx], self.dirs[pidx], perturb=True, generator=self.gen)
            to_img = lambda x: x.reshape(1, p, p, 3).permute(0, 3, 1, 2)  # noqa: E731
            perc = self.perceptual(to_img(pout.rgb), to_img(self.rgb[pidx]))
            loss = loss + cfg.w_perceptual * perc
            terms["perceptual"] = float(perc.detach())
        return loss, terms, out

    @property
    def perceptual(self):
        """LPIPS-alex loss, built on first use (its weights never enter the checkpoint)."""
        if not hasattr(self, "_perceptual"):
            from ..metrics import PerceptualLoss

            self._perceptual = PerceptualLoss("alex", self.cfg.perceptual_weights or None)
        return self._perceptual

    def train_step(self) -> dict[str, float]:
        cfg, st = self.cfg, self.state
        st.field.train()
        if (
            isinstance(st.field, DenseGridField)
            and self.step == cfg.upsample_step
            and st.field.res < cfg.grid_res_final
        ):
            st.field.upsample(cfg.grid_res_final)
            self.opt = make_optimizer(st.field, cfg)
        frac = self.step / max(cfg.steps, 1)
        for g in self.opt.param_groups:
            g["lr"] = g["initial_lr"] * cfg.lr_decay**frac
        idx = self.sample_batch()
        loss, terms, out = self.losses(idx)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        if cfg.occupancy_every and self.step >= cfg.occupancy_warmup and self.step % cfg.occupancy_every == 0:
            st.occupancy.update(lambda x: st.field.density(x)[0], st.step_size, generator=self.gen)
            if self.hull is not None:
                st.occupancy.occupied &= self.hull
        terms["psnr"] = -10 * math.log10(max(terms["mse"], 1e-10))
        terms["samples"] = out.num_samples
        return terms

    def run(self, progress: bool = True, callback=None) -> FitState:
        """Optimise until ``cfg.steps`` (resuming from the run folder's checkpoint when there is one)."""
        return fit_loop(self, "fit", self._postfix, progress, callback)

    def _postfix(self, terms: dict, steps_done: int, seconds: float) -> dict:
        return {
            "psnr": f"{terms['psnr']:.2f}",
            "rays_s": f"{steps_done * self.cfg.batch_rays / max(seconds, 1e-9):.0f}",
            "occ": f"{self.state.occupancy.fraction:.3f}",
        }


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
    while fitter.step < cfg.steps:
        terms = fitter.train_step()
        bar.update(1)
        if fitter.step % 10 == 0 or fitter.step == cfg.steps:
            el = time.perf_counter() - t0
            bar.set_postfix(**postfix(terms, fitter.step - step0, el))
            fitter.history.append({"step": fitter.step, "time": el, **terms})
        if callback is not None:
            callback(fitter)
        if fitter.run_dir is not None and (fitter.step % cfg.checkpoint_every == 0 or fitter.step == cfg.steps):
            fitter.save()
    bar.close()
    return fitter.state


# ------------------------------------------------------------------ run folders
def write_run_config(run_dir: Path, cfg: FitConfig, inputs: list[int], train: Scene) -> None:
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


def make_fitter(scene: Scene, inputs: list[int], cfg: FitConfig, run_dir: str | Path | None = None):
    """The fitter for ``cfg.representation``: :class:`Fitter` for fields, ``GaussianFitter`` for Gaussians."""
    if cfg.representation == "gaussians":
        from .gaussian_fit import GaussianFitter

        return GaussianFitter(scene, inputs, cfg, run_dir)
    return Fitter(scene, inputs, cfg, run_dir)


def load_fit(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a fit from a run folder; returns (state, config.json). The state is a :class:`FitState`
    (field with its occupancy grid) or a ``GaussianState``; both render a camera with ``state.render``."""
    from ..checkpoint import read_checkpoint

    run_dir = Path(run_dir)
    ck = find_checkpoint(run_dir / "checkpoint")
    if ck is None:
        raise FileNotFoundError(f"{run_dir / 'checkpoint'}: no checkpoint here (meta.json missing)")
    meta = json.loads((ck / "meta.json").read_text())
    if meta.get("kind") == "gaussians":
        from .gaussian_fit import load_gaussian_fit

        return load_gaussian_fit(run_dir, device)
    groups, meta = read_checkpoint(run_dir / "checkpoint")
    f = build_field(meta["field"])
    f.load_state_dict(groups["field"])
    occ = OccupancyGrid(groups["occupancy"]["aabb"], 1)
    occ.load_state_dict(groups["occupancy"])
    occ.to(device)
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    state = FitState(f.to(device).eval(), occ, meta["step_size"], torch.tensor(meta["background"], device=device))
    return state, config
