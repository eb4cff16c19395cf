"""Per-scene 3D Gaussian splatting fits (``fewview fit --representation gaussians``).

The 3DGS recipe: one input view per step, loss (1 - l) L1 + l (1 - SSIM) with l = 0.2, per-parameter
learning rates (centres decaying exponentially with the scene extent), SH degree raised every
``gs_sh_every`` steps, adaptive density control (:class:`fewview.gaussians.DefaultStrategy`). Uses the
same run folder, resume, render and evaluation as the field fits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras
from ..checkpoint import find_checkpoint, load_checkpoint, read_checkpoint, save_checkpoint
from ..data import Scene
from ..gaussians import DefaultStrategy, DensifyConfig, GaussianModel, load_ply
from ..metrics.image import ssim
from ..render import OccupancyGrid
from .fit_config import GaussianOptions
from .runs import default_aabb, fit_loop, resolve_device, training_images


@dataclass
class GaussianState:
    model: GaussianModel
    background: Tensor
    sh_degree: int
    backend: str = "auto"

    def render_full(self, cam: Cameras):
        return self.model.render(cam, self.sh_degree, self.background, self.backend)

    @torch.no_grad()
    def render(self, cam: Cameras) -> dict[str, Tensor]:
        """``rgb`` (3,H,W), ``depth`` (1,H,W) (z of the expected termination, divided by alpha; 0 where
        alpha <= 1e-3) and ``opacity`` (1,H,W), on the CPU: the contract of the field fits' render."""
        r = self.render_full(cam[:1])
        return {"rgb": r.rgb.clamp(0, 1).cpu(), "depth": expected_depth(r).cpu(), "opacity": r.alpha.cpu()}


def expected_depth(r) -> Tensor:
    """z of the expected termination of a Gaussian render (its alpha-weighted depth / alpha); 0 where alpha <= 1e-3."""
    a = r.alpha
    return torch.where(a > 1e-3, r.depth / a.clamp_min(1e-3), torch.zeros_like(a))


def scene_extent(cams: Cameras) -> float:
    """1.1 x the largest distance of a camera centre from their mean (the 3DGS scene radius)."""
    c = cams.centers.float()
    return 1.1 * float((c - c.mean(0)).norm(dim=-1).max().clamp_min(1e-3))


def densify_config(cfg: GaussianOptions) -> DensifyConfig:
    return DensifyConfig(
        refine_start=cfg.gs_refine_start,
        refine_stop=cfg.gs_refine_stop or cfg.steps // 2,
        refine_every=cfg.gs_refine_every,
        reset_every=cfg.gs_reset_every,
        grad_threshold=cfg.gs_grad_threshold,
        max_gaussians=cfg.gs_max_gaussians,
    )


@torch.no_grad()
def hull_points(train: Scene, aabb: Tensor, n: int, gen: torch.Generator, images: Tensor) -> tuple[Tensor, Tensor]:
    """n random points inside the visual hull of the input masks, coloured by the mean of their projections."""
    occ = OccupancyGrid(aabb, 64)
    occ.carve_with_masks(train.cameras, train.masks)
    cells = occ.occupied.nonzero().float()
    if len(cells) == 0:
        raise ValueError("the input masks carve an empty visual hull: the cameras and masks disagree")
    pick = cells[torch.randint(0, len(cells), (n,), generator=gen)]
    size = (aabb[1] - aabb[0]) / 64
    pts = aabb[0] + (pick + torch.rand(n, 3, generator=gen)) * size
    return pts, project_colors(train.cameras, images, pts)


def project_colors(cams: Cameras, images: Tensor, pts: Tensor) -> Tensor:
    """Mean colour of each point's projections into the images that see it (grey when none does)."""
    acc = torch.zeros(len(pts), 3)
    cnt = torch.zeros(len(pts), 1)
    for i in range(len(cams)):
        uv, z = cams[i].to(torch.float32).project(pts[None])
        uv, z = uv[0], z[0]
        h, w = images.shape[-2:]
        ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        x, y = uv[ok, 0].long(), uv[ok, 1].long()
        acc[ok] += images[i][:, y, x].T
        cnt[ok] += 1
    return torch.where(cnt > 0, acc / cnt.clamp_min(1), torch.full_like(acc, 0.5))


def init_model(cfg: GaussianOptions, train: Scene, images: Tensor, bounds: Tensor | None, gen) -> GaussianModel:
    """Initial Gaussians: ``hull`` (random points in the masks' visual hull), ``random`` (in the scene box),
    ``auto`` (hull when the inputs have masks), a 3DGS ``.ply``, or a field run folder (points from its
    rendered depth in the input views)."""
    kind = cfg.gs_init
    aabb = bounds.float() if bounds is not None else default_aabb(train.cameras)
    if kind == "auto":
        kind = "hull" if train.masks is not None else "random"
    kw = {"max_sh_degree": cfg.gs_sh_degree}
    if kind == "hull":
        if train.masks is None:
            raise ValueError("gs_init=hull needs input masks; use random, a .ply or a field run folder")
        pts, cols = hull_points(train, aabb, cfg.gs_num_init, gen, images)
        return GaussianModel.from_points(pts, cols, **kw)
    if kind == "random":
        lo, hi = aabb[0], aabb[1]
        pts = lo + (hi - lo) * torch.rand(cfg.gs_num_init, 3, generator=gen)
        return GaussianModel.from_points(pts, project_colors(train.cameras, images, pts), **kw)
    path = Path(kind)
    if path.suffix == ".ply":
        return load_ply(path)
    if (path / "checkpoint").exists():
        from ..export import point_cloud
        from .fit import load_field_fit

        state, _ = load_field_fit(path)
        pts, cols = point_cloud(state.render, train.cameras)
        if len(pts) > cfg.gs_num_init:
            pts_idx = torch.randperm(len(pts), generator=gen)[: cfg.gs_num_init]
            pts, cols = pts[pts_idx], cols[pts_idx]
        return GaussianModel.from_points(pts, cols, **kw)
    raise ValueError(f"gs_init {cfg.gs_init!r}: choose auto, hull, random, a .ply file or a field run folder")


class GaussianFitter:
    """Fits 3D Gaussians to the input views of a scene; same run-folder contract as :class:`Fitter`."""

    def __init__(self, scene: Scene, inputs: list[int], cfg: GaussianOptions, run_dir: str | Path | None = None):
        self.cfg = cfg
        self.inputs = list(inputs)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.train = scene.select(self.inputs)
        bg = torch.tensor(cfg.background, dtype=torch.float32)
        dev = resolve_device(cfg.device)
        self.device = dev
        self.images = training_images(self.train, bg).float()
        self.masks = None if self.train.masks is None else self.train.masks.float()
        model = init_model(cfg, self.train, self.images, scene.bounds, self.gen).to(dev)
        self.images = self.images.to(dev)
        self.masks = None if self.masks is None else self.masks.to(dev)
        self.extent = scene_extent(self.train.cameras)
        self.state = GaussianState(model, bg.to(dev), 0, cfg.gs_backend)
        self.strategy = DefaultStrategy(densify_config(cfg), self.extent)
        self.hull = None  # Gaussians leaving the visual hull of the input masks are removed
        if cfg.gs_hull_prune and self.train.masks is not None:
            aabb = scene.bounds.float() if scene.bounds is not None else default_aabb(self.train.cameras)
            self.hull = OccupancyGrid(aabb, 64)
            self.hull.carve_with_masks(self.train.cameras, self.train.masks)
            self.hull.to(dev)
        self.opt = self.make_optimizer(model)
        self.step = 0
        self.history: list[dict] = []
        self._order: list[int] = []

    def make_optimizer(self, model: GaussianModel) -> torch.optim.Optimizer:
        c = self.cfg
        lrs = {
            "means": c.gs_lr_means * self.extent,
            "log_scales": c.gs_lr_scales,
            "quats": c.gs_lr_quats,
            "opacity_logits": c.gs_lr_opacity,
            "sh_dc": c.gs_lr_sh,
            "sh_rest": c.gs_lr_sh / 20,
        }
        groups = [{"params": [getattr(model, k)], "lr": v, "name": k} for k, v in lrs.items()]
        return torch.optim.Adam(groups, eps=1e-15)

    def means_lr(self) -> float:
        c = self.cfg
        t = min(self.step / max(c.steps, 1), 1.0)
        return math.exp((1 - t) * math.log(c.gs_lr_means) + t * math.log(c.gs_lr_means_final)) * self.extent

    # -------------------------------------------------------------- checkpoints
    def save(self) -> None:
        if self.run_dir is None:
            return
        meta = {
            "kind": "gaussians",
            "step": self.step,
            "sh_degree": self.state.sh_degree,
            "max_sh_degree": self.state.model.max_sh_degree,
            "background": self.state.background.tolist(),
            "backend": self.state.backend,
            "extent": self.extent,
            "history": self.history,
            "order": self._order,
        }
        tensors = {"gaussians": self.state.model.tensors(), "sampler": {"generator": self.gen.get_state()}}
        strat = self.strategy.state_dict()
        if strat:
            tensors["strategy"] = strat
        save_checkpoint(self.run_dir / "checkpoint", tensors, meta, self.opt)

    def try_resume(self) -> bool:
        ck = None if self.run_dir is None else find_checkpoint(self.run_dir / "checkpoint")
        if ck is None:
            return False
        groups, meta = read_checkpoint(ck)
        if meta.get("kind") != "gaussians":
            raise ValueError(f"{ck} holds a field fit, not Gaussians: use another run folder")
        model = GaussianModel.from_tensors(groups["gaussians"], meta["max_sh_degree"]).to(self.device)
        self.state.model = model
        self.opt = self.make_optimizer(model)
        groups, meta = load_checkpoint(ck, self.opt)
        self.strategy.load_state_dict({k: v.to(self.device) for k, v in groups.get("strategy", {}).items()})
        self.gen.set_state(groups["sampler"]["generator"])
        self.state.sh_degree = meta["sh_degree"]
        self.step = meta["step"]
        self.history = meta.get("history", [])
        self._order = meta.get("order", [])
        return True

    # -------------------------------------------------------------------- loop
    def next_view(self) -> int:
        if not self._order:
            self._order = torch.randperm(len(self.inputs), generator=self.gen).tolist()
        return self._order.pop()

    def losses(self, v: int):
        cfg, st = self.cfg, self.state
        r = st.render_full(self.train.cameras[v])
        gt = self.images[v]
        l1 = (r.rgb - gt).abs().mean()
        d_ssim = 1 - ssim(r.rgb[None], gt[None]).mean()
        loss = (1 - cfg.gs_ssim_weight) * l1 + cfg.gs_ssim_weight * d_ssim
        mse = float(F.mse_loss(r.rgb.detach(), gt))
        terms = {"l1": float(l1.detach()), "mse": mse}
        if cfg.w_silhouette > 0 and self.masks is not None:
            sil = F.mse_loss(r.alpha, self.masks[v])
            loss = loss + cfg.w_silhouette * sil
            terms["silhouette"] = float(sil.detach())
        if cfg.gs_w_opacity > 0:
            op = st.model.opacities.mean()
            loss = loss + cfg.gs_w_opacity * op
            terms["opacity"] = float(op.detach())
        if cfg.w_perceptual > 0:
            perc = self.perceptual(r.rgb[None], gt[None])
            loss = loss + cfg.w_perceptual * perc
            terms["perceptual"] = float(perc.detach())
        return loss, terms, r

    @property
    def perceptual(self):
        if not hasattr(self, "_perceptual"):
            from ..metrics import PerceptualLoss

            self._perceptual = PerceptualLoss("alex", self.cfg.perceptual_weights or None).to(self.device)
        return self._perceptual

    def train_step(self) -> dict[str, float]:
        cfg, st = self.cfg, self.state
        if cfg.gs_sh_every and self.step > 0 and self.step % cfg.gs_sh_every == 0:
            st.sh_degree = min(st.sh_degree + 1, st.model.max_sh_degree)
        for g in self.opt.param_groups:
            if g["name"] == "means":
                g["lr"] = self.means_lr()
        loss, terms, r = self.losses(self.next_view())
        self.strategy.pre_backward(r)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.strategy.post_backward(st.model, self.opt, r, self.step)
        self.step += 1
        if self.hull is not None and self.step % cfg.gs_refine_every == 0:
            outside = ~self.hull.query(st.model.means.detach())
            terms["pruned_outside_hull"] = self.strategy.prune(st.model, self.opt, outside)
        terms["psnr"] = -10 * math.log10(max(terms["mse"], 1e-10))
        terms["gaussians"] = len(st.model)
        return terms

    def run(self, progress: bool = True, callback=None) -> GaussianState:
        """Optimise until ``cfg.steps`` (resuming from the run folder's checkpoint when there is one)."""
        postfix = lambda terms, n, sec: {"psnr": f"{terms['psnr']:.2f}", "gaussians": terms["gaussians"]}  # noqa: E731
        return fit_loop(self, "fit gaussians", postfix, progress, callback)


def load_gaussian_fit(run_dir: str | Path, device="cpu") -> tuple[GaussianState, dict]:
    run_dir = Path(run_dir)
    groups, meta = read_checkpoint(run_dir / "checkpoint")
    model = GaussianModel.from_tensors(groups["gaussians"], meta["max_sh_degree"]).to(device)
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    bg = torch.tensor(meta["background"], device=device)
    return GaussianState(model.eval(), bg, meta["sh_degree"], meta.get("backend", "auto")), config
