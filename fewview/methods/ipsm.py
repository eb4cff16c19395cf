"""IPSM (Wang et al., NeurIPS 2024): 3D Gaussians from sparse views, guided by a diffusion prior through
"inline priors" -- the seen views warped into pseudo views.

The pipeline, one training step at a time:

1. **Input views**: the Gaussian fit's photometric, silhouette and opacity losses, plus a Pearson depth loss
   between the rendered disparity and the monocular depth network's on each input image.
2. From ``ipsm_start`` to ``ipsm_end`` (fractions of the schedule; the official 2000..9500 of 10k), each
   step also renders one **pseudo view**: an input camera perturbed by σ annealed from 1 % to 5 % of the
   camera distance, drawn in order (the official code pops them at random and loses the annealing).
3. **Inline prior**: the closest input image and its rendered depth are inverse-warped into the pseudo
   view through the pseudo view's rendered depth (both depths detached); IPSM's min-max depth test keeps the
   pixels whose warped and rendered depths agree (< 0.3 for the prior, < 0.1 for the geometry loss).
4. **IPSM**: the render is encoded by the prior's VAE and noised at t ~ U[0.25, 0.75]·T; the inpainting
   prior conditioned on the warped view (unknown where the test failed) gives ε_rect, the same model shown
   nothing gives the plain prior's ε_plain; the terms w(t)(ε_rect − ε) and w(t)(ε_rect − ε_plain), weights
   0.02 and 0.2 (a tenth of the official 0.2 and 2.0, chosen on validation objects and lego's val views for this
   64² prior; docs/ipsm.md), with the code's w(t) = ᾱ_t (``ipsm_weighting``).
5. **Depth** on the pseudo view: 1 − Pearson(rendered disparity, depth network on the render), the gradient
   flowing through the network's input as in the code; weight 0.5.
6. **Geometry**: L1 between the render and the warped input under the strict mask; weight 2.0.
Every pseudo-view term ramps in over ``ipsm_ramp`` of the schedule. ``ipsm_guidance`` selects the ablations:
``ipsm`` (both terms), ``rectified`` (the first only), ``sds`` (SDS with the plain prior, the baseline)
or ``none``.

Deviations from the official code, each forced by what exists here: the priors are fewview's own
64x64 inpainting latent diffusion model and monocular depth network (SD-Inpainting-1.5, SD-1.5 and MiDaS
cannot be downloaded); the plain prior is the inpainting model with every pixel unknown, which it was
trained on (its ``full`` masks), rather than a second text-to-image model; there is no text prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as option
from pathlib import Path

import torch
from torch import Tensor

from ..cameras import nearest_point_to_axes, pseudo_views
from ..data import Scene
from ..diffusion.masks import ipsm_warp
from ..guidance import inpaint_prior, ipsm_terms, sds_terms
from ..guidance.score import to_prior_size
from ..models.depth import pearson
from .fit_config import GAUSSIAN_SPARSE_PRESET, FitConfig
from .gaussian_fit import GaussianFitter, expected_depth

GUIDANCE = ("ipsm", "rectified", "sds", "none")


@dataclass
class IPSMOptions:
    ipsm_prior: str = option(default="inpaint64", metadata={"help": "inpainting prior (shipped name or folder)"})
    ipsm_depth_model: str = option(default="depth64", metadata={"help": "monocular depth network (name or folder)"})
    ipsm_guidance: str = option(default="ipsm", metadata={"help": "ipsm | rectified | sds | none"})
    ipsm_w_rectified: float = option(default=0.02, metadata={"help": "weight of w(t)(ε_rect − ε) (code: 0.2)"})
    ipsm_w_difference: float = option(default=0.2, metadata={"help": "weight of w(t)(ε_rect − ε_plain) (code: 2.0)"})
    ipsm_w_sds: float = option(default=0.02, metadata={"help": "weight of SDS with the plain prior (guidance sds)"})
    ipsm_cfg: float = option(default=7.5, metadata={"help": "classifier-free guidance of the rectified prior"})
    ipsm_weighting: str = option(default="ipsm", metadata={"help": "w(t): ipsm (ᾱ_t, the code) | sds (1 − ᾱ_t)"})
    ipsm_t_min: float = option(default=0.25, metadata={"help": "smallest t / T"})
    ipsm_t_max: float = option(default=0.75, metadata={"help": "largest t / T"})
    ipsm_w_depth: float = option(default=0.05, metadata={"help": "Pearson depth loss on the input views"})
    ipsm_w_depth_pseudo: float = option(default=0.5, metadata={"help": "Pearson depth loss on pseudo views"})
    ipsm_w_geometry: float = option(default=2.0, metadata={"help": "L1 to the warped input under the strict mask"})
    ipsm_start: float = option(default=0.2, metadata={"help": "pseudo views from this fraction of the steps"})
    ipsm_end: float = option(default=0.95, metadata={"help": "... until this fraction"})
    ipsm_ramp: float = option(default=0.05, metadata={"help": "pseudo-view terms ramp in over this fraction"})
    ipsm_sigma_start: float = option(default=0.01, metadata={"help": "pseudo-view σ at the first draw (x distance)"})
    ipsm_sigma_end: float = option(default=0.05, metadata={"help": "pseudo-view σ at the last draw (x distance)"})
    ipsm_mask_test: str = option(default="minmax", metadata={"help": "minmax (IPSM's) | relative (fewview's)"})
    ipsm_threshold: float = option(default=0.3, metadata={"help": "min-max depth test of the prior's mask"})
    ipsm_threshold_strict: float = option(default=0.1, metadata={"help": "... of the geometry loss's mask"})


@dataclass
class IPSMConfig(FitConfig, IPSMOptions):
    """The Gaussian fit's options (defaults: ``GAUSSIAN_SPARSE_PRESET``) and IPSM's."""

    representation: str = option(default="gaussians", metadata={"help": "IPSM fits 3D Gaussians"})
    steps: int = option(default=1500, metadata={"help": "optimisation steps"})
    w_silhouette: float = option(default=GAUSSIAN_SPARSE_PRESET["w_silhouette"], metadata={"help": "mask loss"})
    gs_hull_prune: bool = option(default=GAUSSIAN_SPARSE_PRESET["gs_hull_prune"], metadata={"help": "hull pruning"})
    gs_w_opacity: float = option(default=GAUSSIAN_SPARSE_PRESET["gs_w_opacity"], metadata={"help": "opacity loss"})
    gs_reset_every: int = option(default=GAUSSIAN_SPARSE_PRESET["gs_reset_every"], metadata={"help": "reset"})
    method: str = option(default="ipsm", metadata={"help": "the method this config runs"})


def render_disparity(r) -> Tensor:
    """Disparity (1,H,W) of a Gaussian render: alpha / expected depth, 0 where nothing is hit."""
    return torch.where(r.alpha > 1e-3, r.alpha**2 / r.depth.clamp_min(1e-6), torch.zeros_like(r.alpha))


def load_priors(cfg: IPSMConfig, device):
    """(inpainting prior, depth network), frozen; loaded once per fit and never saved into its checkpoint."""
    from ..pretrained import from_pretrained, resolve_model_dir

    prior = depth = None
    if cfg.ipsm_guidance != "none":
        prior = from_pretrained(resolve_model_dir(cfg.ipsm_prior), device).eval().requires_grad_(False)
    if cfg.ipsm_w_depth > 0 or cfg.ipsm_w_depth_pseudo > 0:
        depth = from_pretrained(resolve_model_dir(cfg.ipsm_depth_model), device).eval().requires_grad_(False)
    return prior, depth


class IPSMFitter(GaussianFitter):
    """:class:`GaussianFitter` plus IPSM's depth, pseudo-view, inline-prior and score terms."""

    def __init__(self, scene: Scene, inputs: list[int], cfg: IPSMConfig, run_dir: str | Path | None = None):
        if cfg.ipsm_guidance not in GUIDANCE:
            raise ValueError(f"ipsm_guidance {cfg.ipsm_guidance!r}: choose one of {GUIDANCE}")
        super().__init__(scene, inputs, cfg, run_dir)
        self.prior, self.depth_net = load_priors(cfg, self.device)
        cams = self.train.cameras
        target = nearest_point_to_axes(cams) if len(cams) >= 2 else cams.centers[0] + 3 * cams.c2w[0, :3, 2]
        scale = float((cams.centers.double() - target.double()).norm(dim=-1).mean())
        self.first = int(cfg.ipsm_start * cfg.steps)
        self.last = max(int(cfg.ipsm_end * cfg.steps), self.first + 1)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.pseudo = pseudo_views(cams, self.last - self.first, target, scale,
                                   (cfg.ipsm_sigma_start, cfg.ipsm_sigma_end), gen)  # fmt: skip
        self.input_disparity = None
        if self.depth_net is not None:
            with torch.no_grad():
                self.input_disparity = self.depth_net.predict(self.images)

    # ------------------------------------------------------------- pseudo views
    def ramp(self) -> float:
        c = self.cfg
        if not self.first <= self.step < self.last:
            return 0.0
        return min((self.step - self.first) / max(c.ipsm_ramp * c.steps, 1.0), 1.0)

    def step_generator(self) -> torch.Generator:
        """This step's draws (t, noise): a function of (seed, step), so a resumed fit draws the same."""
        return torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)

    def inline_prior(self, i: int, r_pseudo) -> tuple[Tensor, Tensor, Tensor]:
        """(warped input image (3,H,W), prior mask, strict mask (1,H,W)) of pseudo view ``i``."""
        c = self.cfg
        cam = self.pseudo.cameras[i]
        k = int(self.pseudo.closest[i])
        with torch.no_grad():
            d_k = expected_depth(self.state.render_full(self.train.cameras[k]))
            d_p = expected_depth(r_pseudo).detach()
            kc = self.train.cameras[k]
            warped, _, (m_prior, m_strict) = ipsm_warp(
                d_p[None], cam.c2w, cam.K, self.images[k][None], d_k[None], kc.c2w, kc.K,
                (c.ipsm_threshold, c.ipsm_threshold_strict), c.ipsm_mask_test)  # fmt: skip
        return warped[0], m_prior[0].float(), m_strict[0].float()

    def plain_prior(self, size: int):
        """The inpainting model shown nothing: every pixel unknown, so its condition is the same at every step
        (the masked image is all grey) and is encoded once."""
        if getattr(self, "_plain", None) is None:
            grey = torch.full((1, 3, size, size), 0.5, device=self.device)
            self._plain = inpaint_prior(self.prior, grey, torch.ones(1, 1, size, size, device=self.device))
        return self._plain

    def guidance_terms(self, rgb: Tensor, warped: Tensor, known: Tensor) -> dict[str, Tensor]:
        c = self.cfg
        if c.ipsm_guidance == "none":
            return {}
        size = int(self.prior.config.latent_size * self.prior.vae.downsample)
        x = to_prior_size(rgb[None], size)
        z = self.prior.vae.encode(x)
        g = self.step_generator()
        sched = self.prior.schedule
        t = int(torch.randint(int(c.ipsm_t_min * sched.T), int(c.ipsm_t_max * sched.T), (1,), generator=g))
        noise = torch.randn(z.shape, generator=g).to(z)
        plain = self.plain_prior(size)
        if c.ipsm_guidance == "sds":
            return sds_terms(plain, z, t, noise, c.ipsm_weighting, c.ipsm_w_sds)
        unknown = 1 - to_prior_size(known[None], size, "nearest")
        rect = inpaint_prior(self.prior, to_prior_size(warped[None], size), unknown, c.ipsm_cfg)
        terms = ipsm_terms(rect, plain, z, t, noise, c.ipsm_w_rectified, c.ipsm_w_difference, c.ipsm_weighting)
        if c.ipsm_guidance == "rectified":
            terms.pop("ipsm_difference")
        return terms

    def pseudo_terms(self) -> dict[str, Tensor]:
        c = self.cfg
        i = self.step - self.first
        r = self.state.render_full(self.pseudo.cameras[i])
        rgb = r.rgb.clamp(0, 1)
        warped, known, strict = self.inline_prior(i, r)
        terms = self.guidance_terms(rgb, warped, known)
        if c.ipsm_w_depth_pseudo > 0 and self.depth_net is not None:
            net = self.depth_net.predict(rgb[None])  # gradient through the network's input
            terms["depth_pseudo"] = c.ipsm_w_depth_pseudo * (1 - pearson(render_disparity(r)[None], net).mean())
        if c.ipsm_w_geometry > 0:
            terms["geometry"] = c.ipsm_w_geometry * (rgb * strict - warped * strict).abs().mean()
        return terms

    # ------------------------------------------------------------------ losses
    def losses(self, v: int):
        c = self.cfg
        loss, terms, r = super().losses(v)
        if c.ipsm_w_depth > 0 and self.input_disparity is not None:
            d = c.ipsm_w_depth * (1 - pearson(render_disparity(r)[None], self.input_disparity[v : v + 1]).mean())
            loss = loss + d
            terms["depth"] = float(d.detach())
        ramp = self.ramp()
        if ramp > 0:
            for name, value in self.pseudo_terms().items():
                loss = loss + ramp * value
                terms[name] = float(value.detach())
            terms["ramp"] = ramp
        return loss, terms, r

    def run(self, progress: bool = True, callback=None):
        from .runs import fit_loop

        def postfix(terms, n, sec):
            shown = {"psnr": f"{terms['psnr']:.2f}", "gaussians": terms["gaussians"]}
            for k in ("ipsm_rectified", "ipsm_difference", "sds", "geometry", "depth_pseudo"):
                if k in terms:
                    shown[k] = f"{terms[k]:.2e}"
            return shown

        return fit_loop(self, "fit ipsm", postfix, progress, callback)

