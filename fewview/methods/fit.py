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
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras, camera_rays
from ..checkpoint import find_checkpoint, load_checkpoint, read_checkpoint, save_checkpoint
from ..data import Scene
from ..fields import DenseGridField, Field, HashGridField, MLPField, build_field
from ..render import OccupancyGrid, RenderOutput, distortion_loss, march_rays, opacity_entropy_loss, render_image
from .fit_config import FieldOptions
from .runs import default_aabb, fit_loop, resolve_device, training_images


# --------------------------------------------------------------------- field
def shrink_to_occupied(occ: OccupancyGrid, margin_cells: int = 2) -> Tensor:
    """The box of occupied cells (plus a margin) inside the grid's box."""
    idx = occ.occupied.nonzero()
    if len(idx) == 0:
        return occ.aabb.clone()
    cell = (occ.aabb[1] - occ.aabb[0]) / occ.res
    lo = occ.aabb[0] + (idx.amin(0) - margin_cells).clamp_min(0) * cell
    hi = occ.aabb[0] + (idx.amax(0) + 1 + margin_cells).clamp(max=occ.res) * cell
    return torch.stack([lo, hi])


def make_field(cfg: FieldOptions, aabb: Tensor, step: float) -> Field:
    if cfg.representation == "grid":
        return DenseGridField(aabb, resolution=cfg.grid_res, step=step, init_alpha=cfg.init_alpha)
    if cfg.representation == "hashgrid":
        return HashGridField(aabb, step=step, init_alpha=cfg.init_alpha)
    if cfg.representation == "mlp":
        return MLPField(aabb)
    raise ValueError(f"unknown field {cfg.representation!r}: choose grid, hashgrid or mlp")


def make_optimizer(f: Field, cfg: FieldOptions) -> torch.optim.Optimizer:
    """Adam (fused kernel where this torch build has one: ~8x faster on large grids on CPU)."""
    try:
        return torch.optim.Adam(param_groups(f, cfg), betas=(0.9, 0.99), eps=1e-15, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(param_groups(f, cfg), betas=(0.9, 0.99), eps=1e-15)


DEFAULT_LR_GRID = {"grid": 0.1, "hashgrid": 1e-2}
DEFAULT_LR_NET = {"grid": 1e-3, "hashgrid": 1e-3, "mlp": 5e-4}


def param_groups(f: Field, cfg: FieldOptions) -> list[dict]:
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

    def __init__(self, scene: Scene, inputs: list[int], cfg: FieldOptions, run_dir: str | Path | None = None):
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


def load_field_fit(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[FitState, dict]:
    """A field fit's state (field + occupancy grid) and ``config.json`` from its run folder."""
    run_dir = Path(run_dir)
    groups, meta = read_checkpoint(run_dir / "checkpoint")
    f = build_field(meta["field"])
    f.load_state_dict(groups["field"])
    occ = OccupancyGrid(groups["occupancy"]["aabb"], 1)
    occ.load_state_dict(groups["occupancy"])
    occ.to(device)
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    state = FitState(f.to(device).eval(), occ, meta["step_size"], torch.tensor(meta["background"], device=device))
    return state, config
