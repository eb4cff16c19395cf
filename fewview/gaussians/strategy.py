"""Adaptive density control (3DGS): clone small and split large Gaussians with large view-space
gradients, prune transparent and oversized ones, reset opacities periodically.

Gaussians are added and removed together with their Adam moments (new ones start at zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .model import GaussianModel, inverse_sigmoid
from .project import quat_to_rotmat
from .rasterize import GaussianRender


def _edit_parameters(model: GaussianModel, opt: torch.optim.Optimizer, keep: Tensor | None, extra: dict | None):
    """Keep rows ``keep`` (bool mask or None for all) of every parameter and append ``extra[name]`` rows,
    moving the optimizer's per-parameter state the same way (appended rows get zero moments)."""
    for group in opt.param_groups:
        old = group["params"][0]
        name = next(n for n in model.PARAMS if getattr(model, n) is old)
        data = old.data if keep is None else old.data[keep]
        add = None if extra is None else extra[name].to(data)
        new = nn.Parameter(data if add is None else torch.cat([data, add]))
        state = opt.state.pop(old, None)
        if state:
            for k, v in list(state.items()):
                if isinstance(v, Tensor) and v.shape == old.shape:
                    v = v if keep is None else v[keep]
                    state[k] = v if add is None else torch.cat([v, torch.zeros_like(add)])
            opt.state[new] = state
        group["params"][0] = new
        setattr(model, name, new)


@dataclass
class DensifyConfig:
    refine_start: int = 500
    refine_stop: int = 15000
    refine_every: int = 100
    reset_every: int = 3000
    grad_threshold: float = 2e-4  # of the mean |d loss / d NDC centre| over the views that saw a Gaussian
    percent_dense: float = 0.01  # split above, clone below this fraction of the scene extent
    prune_opacity: float = 0.005
    prune_screen_px: float = 20.0  # prune larger screen radii (after the first opacity reset)
    prune_world: float = 0.1  # prune larger world scales, as a fraction of the scene extent
    max_gaussians: int = 1_000_000


class DefaultStrategy:
    """The 3DGS schedule. Call :meth:`pre_backward` before ``loss.backward()`` and :meth:`post_backward`
    after it (before ``optimizer.step()`` is fine too: only the gradient of the projected centres is read)."""

    def __init__(self, cfg: DensifyConfig, scene_extent: float):
        self.cfg = cfg
        self.extent = scene_extent
        self.grad_accum: Tensor | None = None
        self.count: Tensor | None = None
        self.max_radii: Tensor | None = None

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in (("grad_accum", self.grad_accum), ("count", self.count),
                                  ("max_radii", self.max_radii)) if v is not None}  # fmt: skip

    def load_state_dict(self, d: dict[str, Tensor]) -> None:
        self.grad_accum, self.count, self.max_radii = d.get("grad_accum"), d.get("count"), d.get("max_radii")

    def _ensure(self, n: int, device) -> None:
        if self.grad_accum is None or len(self.grad_accum) != n:
            self.grad_accum = torch.zeros(n, device=device)
            self.count = torch.zeros(n, device=device)
            self.max_radii = torch.zeros(n, device=device)

    def pre_backward(self, render: GaussianRender) -> None:
        if render.means2d is not None and render.means2d.requires_grad:
            render.means2d.retain_grad()

    @torch.no_grad()
    def post_backward(self, model: GaussianModel, opt: torch.optim.Optimizer, render: GaussianRender, step: int):
        """Accumulate statistics for the render of training step ``step`` (0-based) and refine when due."""
        cfg = self.cfg
        if step >= cfg.refine_stop:
            return
        self._ensure(len(model), model.means.device)
        g = render.means2d_grad()
        if g is not None and len(render.ids):
            g = g.clone()
            g[:, 0] *= 0.5 * render.width
            g[:, 1] *= 0.5 * render.height
            self.grad_accum.index_add_(0, render.ids, g.norm(dim=-1))
            self.count.index_add_(0, render.ids, torch.ones_like(render.ids, dtype=self.count.dtype))
            self.max_radii[render.ids] = torch.maximum(self.max_radii[render.ids], render.radii.float())
        s = step + 1
        if s > cfg.refine_start and s % cfg.refine_every == 0:
            self.refine(model, opt, prune_big=s > cfg.reset_every)
        if cfg.reset_every and s % cfg.reset_every == 0:
            self.reset_opacity(model, opt)

    @torch.no_grad()
    def refine(self, model: GaussianModel, opt: torch.optim.Optimizer, prune_big: bool) -> dict[str, int]:
        cfg = self.cfg
        avg = self.grad_accum / self.count.clamp_min(1)
        high = avg >= cfg.grad_threshold
        big = model.scales.amax(-1) > cfg.percent_dense * self.extent
        room = max(cfg.max_gaussians - len(model), 0)
        clone = (high & ~big).nonzero().squeeze(1)[:room]
        split = (high & big).nonzero().squeeze(1)[: max(room - len(clone), 0)]  # each split adds one
        n0 = len(model)
        # Clones: exact copies. Splits: two samples from the Gaussian, scales / 1.6, replacing the original.
        t = model.tensors()
        extra = {k: v[clone] for k, v in t.items()}
        if len(split):
            sc = model.scales[split]
            rot = quat_to_rotmat(model.quats[split])
            samples = [(rot @ (torch.randn_like(sc) * sc)[..., None]).squeeze(-1) + t["means"][split] for _ in range(2)]
            new_split = {
                "means": torch.cat(samples),
                "log_scales": (sc / 1.6).log().repeat(2, 1),
                **{k: t[k][split].repeat(2, *([1] * (t[k].dim() - 1))) for k in ("quats", "opacity_logits", "sh_dc",
                                                                                    "sh_rest")},
            }  # fmt: skip
            extra = {k: torch.cat([extra[k], new_split[k]]) for k in extra}
        _edit_parameters(model, opt, None, extra)
        n_added = len(model) - n0
        # Prune: split originals, transparent ones, and (after the first reset) oversized ones.
        prune = model.opacities < cfg.prune_opacity
        prune[split] = True
        if prune_big:
            radii = torch.cat([self.max_radii, self.max_radii.new_zeros(n_added)])
            prune |= radii > cfg.prune_screen_px
            prune |= model.scales.amax(-1) > cfg.prune_world * self.extent
        _edit_parameters(model, opt, ~prune, None)
        self.grad_accum = self.count = self.max_radii = None
        self._ensure(len(model), model.means.device)
        return {"cloned": len(clone), "split": len(split), "pruned": int(prune.sum()), "total": len(model)}

    @torch.no_grad()
    def prune(self, model: GaussianModel, opt: torch.optim.Optimizer, remove: Tensor) -> int:
        """Remove the Gaussians where ``remove`` (N,) is True (with their optimizer state and statistics)."""
        n = int(remove.sum())
        if n:
            keep = ~remove
            _edit_parameters(model, opt, keep, None)
            for k in ("grad_accum", "count", "max_radii"):
                v = getattr(self, k)
                if v is not None and len(v) == len(keep):
                    setattr(self, k, v[keep])
        return n

    @torch.no_grad()
    def reset_opacity(self, model: GaussianModel, opt: torch.optim.Optimizer) -> None:
        """Clamp opacities to at most 0.01 and zero their Adam moments."""
        new = torch.minimum(model.opacity_logits, inverse_sigmoid(torch.tensor(0.01)))
        model.opacity_logits.data.copy_(new)
        st = opt.state.get(model.opacity_logits, {})
        for k in ("exp_avg", "exp_avg_sq"):
            if k in st:
                st[k].zero_()
