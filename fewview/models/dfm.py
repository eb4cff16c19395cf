"""DFM (Tewari et al. 2023, Diffusion with Forward Models): a diffusion model whose denoiser outputs a 3-D scene.

The clean estimate x̂0 of a noisy target view is a *render*: the denoiser builds a pixelNeRF-style scene from the
context views (clean, t = 0) and the noisy target view (at t), and renders it at the target camera. Training never
sees 3-D ground truth; every sample is a 3-D-consistent scene.

As in the paper and the official code:

1. A context-only pixelNeRF (``context``) renders a deterministic estimate of the target view: colour, depth and
   ``features`` extra channels. fewview renders it at the encoder's resolution (H/2) and upsamples it; the
   official code renders it at full resolution.
2. It is concatenated with the noisy target image (3 + 3 + 1 + features channels) and encoded by a time-conditioned
   encoder (``joint.encoder``, the time embedding added after its stem; the official code uses a DiT-XL/2).
3. The joint field (``joint``) reads context features (t = 0) and target features (t); each view's hidden states
   are modulated by its own time embedding (FiLM). That field is the scene S; x̂0 is S rendered at the target
   camera (x0-prediction, cosine schedule, 1000 steps).

Losses per step on random patches: the target patch and a patch of a second, novel view of the same scene rendered
from S (the batch's last context view is held out for it, so ``--context-min 2`` gives 1 context view), the
conditioning-colour loss of the deterministic estimate (zero for condition-dropped items), LPIPS (0.2) on the
patches (upsampled to ``lpips_size``: AlexNet needs more than 16 pixels), edge-aware depth smoothness and
mip-NeRF 360's distortion (0.02 each, the issue's setting; the official CO3D run uses 0). With probability
``cond_drop`` the context images are zeroed (classifier-free guidance), as the official code does.

Sampling: DDIM (``sample_steps``, η = 0) with dynamic thresholding of x̂0 at the ``threshold`` quantile; the
result is a :class:`DFMScene` that renders any camera and exports a mesh. :func:`autoregressive` grows the context
with each sampled view along an orbit (the paper's 360° results).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as option

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import Cameras, camera_rays
from ..diffusion.samplers import classifier_free_guidance, sample_grid
from ..diffusion.schedule import NoiseSchedule
from ..metrics.lpips import PerceptualLoss
from ..pretrained import register_model
from ..render.image import render_image
from ..render.volume import RenderOutput, distortion_loss
from .pixelnerf import PixelNeRF, PixelNeRFConfig, ray_outputs, scene_scale


@dataclass
class DFMConfig:
    widths: tuple[int, ...] = option(default=(32, 48, 64), metadata={"help": "image encoder widths"})
    hidden: int = option(default=64, metadata={"help": "field MLP width"})
    blocks_before_mean: int = option(default=2, metadata={"help": "MLP blocks before the view mean"})
    blocks_after_mean: int = option(default=1, metadata={"help": "MLP blocks after the view mean"})
    pos_freqs: int = option(default=6, metadata={"help": "point encoding frequencies"})
    dir_freqs: int = option(default=4, metadata={"help": "direction encoding frequencies"})
    samples_coarse: int = option(default=16, metadata={"help": "joint field: coarse samples per ray"})
    samples_fine: int = option(default=8, metadata={"help": "joint field: fine samples per ray"})
    estimate_samples: int = option(default=16, metadata={"help": "deterministic estimate: samples per ray"})
    band: float = option(default=0.45, metadata={"help": "near/far = d (1 -+ band), d = camera distance"})
    background: float = option(default=1.0, metadata={"help": "background colour"})
    features: int = option(default=16, metadata={"help": "estimate's extra feature channels (official 64)"})
    time_dim: int = option(default=64, metadata={"help": "time embedding width"})
    num_train_timesteps: int = option(default=1000, metadata={"help": "diffusion steps"})
    beta_schedule: str = option(default="squaredcos_cap_v2", metadata={"help": "cosine schedule"})
    patch: int = option(default=16, metadata={"help": "side of the supervised target and novel patches"})
    lpips_size: int = option(default=64, metadata={"help": "patches are upsampled to this for LPIPS-alex"})
    w_target: float = option(default=1.0, metadata={"help": "target-view L2"})
    w_novel: float = option(default=1.0, metadata={"help": "novel-view L2"})
    w_cond: float = option(default=1.0, metadata={"help": "deterministic estimate's L2"})
    w_lpips: float = option(default=0.2, metadata={"help": "LPIPS on the patches"})
    w_smooth: float = option(default=0.02, metadata={"help": "edge-aware depth smoothness"})
    w_distortion: float = option(default=0.02, metadata={"help": "mip-NeRF 360 distortion"})
    cond_drop: float = option(default=0.1, metadata={"help": "probability of zeroing the context (CFG)"})
    pn_init: str = option(default="pixelnerf", metadata={"help": "start both fields from this pixelNeRF ('': none)"})
    sample_steps: int = option(default=50, metadata={"help": "DDIM steps when sampling"})
    threshold: float = option(default=0.95, metadata={"help": "dynamic thresholding quantile"})
    guidance: float = option(default=1.0, metadata={"help": "classifier-free guidance scale on x0"})
    temperature: float = option(default=1.0, metadata={"help": "scale of the initial noise"})


def field_config(c: DFMConfig, joint: bool) -> PixelNeRFConfig:
    base = dict(widths=tuple(c.widths), hidden=c.hidden, blocks_before_mean=c.blocks_before_mean,
                blocks_after_mean=c.blocks_after_mean, pos_freqs=c.pos_freqs, dir_freqs=c.dir_freqs, band=c.band,
                background=c.background)  # fmt: skip
    if joint:
        return PixelNeRFConfig(**base, samples_coarse=c.samples_coarse, samples_fine=c.samples_fine,
                               in_channels=3 + 3 + 1 + c.features, time_dim=c.time_dim)  # fmt: skip
    return PixelNeRFConfig(**base, samples_coarse=c.estimate_samples, samples_fine=0, features=c.features)


def edge_aware_smoothness(depth: Tensor, image: Tensor) -> Tensor:
    """Mean |∂depth|·exp(−|∂image|) over both axes; depth (B, 1, h, w) is normalised by its mean; image (B, 3, h, w)."""
    d = depth / depth.mean((-2, -1), keepdim=True).clamp_min(1e-6)
    dx, dy = (d[..., :, 1:] - d[..., :, :-1]).abs(), (d[..., 1:, :] - d[..., :-1, :]).abs()
    ix = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(1, keepdim=True)
    iy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(1, keepdim=True)
    return (dx * torch.exp(-ix)).mean() + (dy * torch.exp(-iy)).mean()


def dense_distortion(weights: Tensor, t: Tensor) -> Tensor:
    """Mean distortion loss of rays given dense (B, R, S) weights at sample distances t (the last sample's width is
    its neighbour's)."""
    b, r, s = t.shape
    deltas = torch.cat([t[..., 1:] - t[..., :-1], (t[..., -1:] - t[..., -2:-1])], -1)
    n = b * r
    out = RenderOutput(weights.new_zeros(n, 3), None, None, weights.reshape(-1), t.reshape(-1),
                       deltas.reshape(-1), torch.arange(n, device=t.device).repeat_interleave(s), n * s)  # fmt: skip
    return distortion_loss(out).mean()


@register_model("dfm", DFMConfig)
class DFM(nn.Module):
    """Denoiser = "build the scene from the context and the noisy target, render it at the target camera"."""

    def __init__(self, config: DFMConfig | None = None):
        super().__init__()
        self.config = c = config or DFMConfig()
        self.context = PixelNeRF(field_config(c, joint=False))  # context encoder + deterministic estimate
        self.joint = PixelNeRF(field_config(c, joint=True))  # target encoder + the scene's field
        self.time_mlp = nn.Sequential(nn.Linear(c.time_dim, c.time_dim), nn.SiLU(), nn.Linear(c.time_dim, c.time_dim))
        self.schedule = NoiseSchedule(c.num_train_timesteps, c.beta_schedule, prediction_type="sample")
        self.perceptual = PerceptualLoss("alex")  # LPIPS is built on first use and holds no state of the model
        if c.pn_init:
            self.load_pixelnerf(c.pn_init)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def load_pixelnerf(self, name_or_path: str) -> None:
        """Both fields' MLPs and the context encoder from a trained pixelNeRF (DFM's stage 0); the estimate's
        extra feature outputs and the target encoder start fresh."""
        from ..pretrained import from_pretrained, resolve_model_dir

        src = from_pretrained(resolve_model_dir(name_or_path)).state_dict()
        for field in (self.context, self.joint):
            own = field.state_dict()
            for k, v in src.items():
                if k.startswith("encoder.") and field is self.joint:
                    continue
                if k in own and own[k].shape == v.shape:
                    own[k] = v
                elif k in own and k.startswith("out.") and own[k].shape[1:] == v.shape[1:]:
                    own[k][: v.shape[0]] = v  # colour and density rows; the feature rows stay as initialised
                elif k in own:
                    raise ValueError(f"{name_or_path}: a pixelNeRF of another shape ({k}); set --model-* to match it")
            field.load_state_dict(own)

    def time_embedding(self, t: Tensor) -> Tensor:
        """(..., time_dim) embedding of integer timesteps (-1, clean, is embedded as 0)."""
        from diffusers.models.embeddings import get_timestep_embedding

        shape = t.shape
        e = get_timestep_embedding((t.reshape(-1) + 1).float(), self.config.time_dim, flip_sin_to_cos=True)
        return self.time_mlp(e.to(self.device)).reshape(*shape, -1)

    # ----------------------------------------------------------------- scene
    def estimate(self, ctx_feats: Tensor, c2w: Tensor, K: Tensor, q_c2w: Tensor, q_K: Tensor,
                 hw: tuple[int, int]) -> Tensor:  # fmt: skip
        """The context-only field's render of the query cameras at H/2, upsampled to ``hw``: (B, 3 + 1 + F, H, W)
        with colour in [-1, 1], depth / scale − 1 and the features."""
        h, w = hw[0] // 2, hw[1] // 2
        qk = q_K.clone()
        qk[:, :2] /= 2
        rays = camera_rays(Cameras(q_c2w, qk, torch.tensor([h, w])), dtype=q_c2w.dtype)
        b = q_c2w.shape[0]
        o, d = rays.origins.reshape(b, -1, 3), rays.directions.reshape(b, -1, 3)
        out = self.context.render_rays(ctx_feats, c2w, K, hw, o, d)
        scale = scene_scale(c2w)[:, None]
        img = torch.cat([out["rgb"] * 2 - 1, (out["depth"] / scale)[..., None] - 1, out["features"]], -1)
        img = img.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return F.interpolate(img, size=hw, mode="bilinear", align_corners=False)

    def scene(self, ctx_feats: Tensor, c2w: Tensor, K: Tensor, estimate: Tensor, x_t: Tensor, t: Tensor,
              q_c2w: Tensor, q_K: Tensor) -> dict:  # fmt: skip
        """The scene S for noisy targets x_t (B, 3, H, W) in [-1, 1] at timesteps t (B,): the joint field's
        inputs (features, cameras and per-view time embeddings of the context views and the target)."""
        b, n = ctx_feats.shape[:2]
        temb_t = self.time_embedding(t)  # (B, D)
        temb = torch.cat([self.time_embedding(torch.full((b, n), -1, device=t.device)), temb_t[:, None]], 1)
        inp = torch.cat([(x_t + 1) / 2, estimate], 1)[:, None]
        tgt = self.joint.encode(inp, temb_t[:, None])
        return {"feats": torch.cat([ctx_feats, tgt], 1), "c2w": torch.cat([c2w, q_c2w[:, None]], 1),
                "K": torch.cat([K, q_K[:, None]], 1), "temb": temb}  # fmt: skip

    def render_scene(self, scene: dict, size, origins: Tensor, dirs: Tensor, noise: Tensor | None = None) -> dict:
        return self.joint.render_rays(scene["feats"], scene["c2w"], scene["K"], size, origins, dirs, noise,
                                      scene["temb"])  # fmt: skip

    def predict_x0(self, ctx_feats: Tensor, estimate: Tensor, c2w: Tensor, K: Tensor, x_t: Tensor, t: Tensor,
                   q_c2w: Tensor, q_K: Tensor, chunk: int = 4096) -> Tensor:  # fmt: skip
        """The denoiser: x̂0 (B, 3, H, W) in [-1, 1] is the scene S(x_t, t) rendered at every target pixel."""
        hw = tuple(x_t.shape[-2:])
        b = x_t.shape[0]
        scene = self.scene(ctx_feats, c2w, K, estimate, x_t, t, q_c2w, q_K)
        rays = camera_rays(Cameras(q_c2w, q_K, torch.tensor(hw)), dtype=x_t.dtype)
        o, d = rays.origins.reshape(b, -1, 3).to(x_t.device), rays.directions.reshape(b, -1, 3).to(x_t.device)
        rgb = torch.cat([self.render_scene(scene, hw, o[:, i : i + chunk], d[:, i : i + chunk])["rgb"]
                         for i in range(0, o.shape[1], chunk)], 1)  # fmt: skip
        return rgb.reshape(b, *hw, 3).permute(0, 3, 1, 2) * 2 - 1

    # ----------------------------------------------------------------- train
    def forward(self, batch) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        if batch.context.shape[1] < 2:
            raise ValueError("DFM holds the last context view out as the novel view: train with --context-min 2")
        hw = tuple(batch.query.shape[-2:])
        b, p = batch.query.shape[0], c.patch
        gens = batch.item_generators()
        draw = [self._draws(g, hw, batch.query.dtype) for g in gens]
        t = torch.stack([d["t"] for d in draw]).to(self.device)
        noise = torch.stack([d["noise"] for d in draw]).to(self.device)
        keep = torch.stack([d["keep"] for d in draw]).to(self.device)  # (B,) 1 = conditioned
        ctx, c2w, K = batch.context[:, :-1], batch.context_c2w[:, :-1], batch.context_K[:, :-1]
        ctx = ctx * keep[:, None, None, None, None]
        ctx_feats = self.context.encode(ctx)
        est = self.estimate(ctx_feats, c2w, K, batch.query_c2w, batch.query_K, hw)
        x0 = batch.query * 2 - 1
        x_t = self.schedule.add_noise(x0, noise, t)
        scene = self.scene(ctx_feats, c2w, K, est, x_t, t, batch.query_c2w, batch.query_K)
        novel = (batch.context[:, -1], batch.context_c2w[:, -1], batch.context_K[:, -1], "novel")
        views = {"target": (batch.query, batch.query_c2w, batch.query_K, "target"), "novel": novel}
        losses, logs = {}, {}
        smooth, dist, lp = 0.0, 0.0, 0.0
        for name, (img, cw, kk, key) in views.items():
            o, d, gt = self._patch(img, cw, kk, [x[key] for x in draw], p)
            jitter = torch.stack([x[key + "_jitter"] for x in draw]).to(self.device)
            out = self.render_scene(scene, hw, o, d, jitter)
            pred = out["rgb"].reshape(b, p, p, 3).permute(0, 3, 1, 2)
            losses[name] = F.mse_loss(pred, gt)
            if c.w_lpips > 0:
                size = (c.lpips_size, c.lpips_size)
                up_p = F.interpolate(pred, size=size, mode="bilinear", align_corners=False)
                lp = lp + self.perceptual(up_p, F.interpolate(gt, size=size, mode="bilinear", align_corners=False)) / 2
            if c.w_smooth > 0:
                smooth = smooth + edge_aware_smoothness(out["depth"].reshape(b, 1, p, p), gt) / 2
            if c.w_distortion > 0:
                scale = scene_scale(scene["c2w"][:, :-1])[:, None, None]
                dist = dist + dense_distortion(out["weights"], out["t"] / scale) / 2
        small = F.interpolate(batch.query, size=est.shape[-2:], mode="area")
        est_rgb = (est[:, :3] + 1) / 2
        per_item = ((est_rgb - small) ** 2).mean((1, 2, 3))
        losses["cond"] = (per_item * keep).sum() / keep.sum().clamp_min(1)
        loss = c.w_target * losses["target"] + c.w_novel * losses["novel"] + c.w_cond * losses["cond"]
        loss = loss + c.w_lpips * lp + c.w_smooth * smooth + c.w_distortion * dist
        for k, v in losses.items():
            logs[k] = float(v.detach())
        for k, v in (("lpips", lp), ("smooth", smooth), ("distortion", dist)):
            if isinstance(v, Tensor):
                logs[k] = float(v.detach())
        return loss, logs

    def _draws(self, g: torch.Generator, hw, dtype) -> dict:
        """One item's random draws, all from its own generator (DDP- and resume-exact)."""
        c = self.config
        h, w = hw
        p = c.patch
        s = c.samples_coarse
        return {"t": torch.randint(0, c.num_train_timesteps, (), generator=g),
                "noise": torch.randn(3, h, w, generator=g, dtype=dtype),
                "keep": (torch.rand((), generator=g) >= c.cond_drop).to(dtype),
                "target": (int(torch.randint(0, h - p + 1, (), generator=g)),
                           int(torch.randint(0, w - p + 1, (), generator=g))),
                "novel": (int(torch.randint(0, h - p + 1, (), generator=g)),
                          int(torch.randint(0, w - p + 1, (), generator=g))),
                "target_jitter": torch.rand(p * p, s, generator=g, dtype=dtype),
                "novel_jitter": torch.rand(p * p, s, generator=g, dtype=dtype)}  # fmt: skip

    def _patch(self, img: Tensor, c2w: Tensor, K: Tensor, corners: list, p: int):
        """Rays (B, p², 3) x2 and the ground-truth patch (B, 3, p, p) at each item's corner (y, x)."""
        h, w = img.shape[-2:]
        rays = camera_rays(Cameras(c2w, K, torch.tensor([h, w])), dtype=img.dtype)
        o, d, gt = [], [], []
        for i, (y, x) in enumerate(corners):
            o.append(rays.origins[i, y : y + p, x : x + p].reshape(-1, 3))
            d.append(rays.directions[i, y : y + p, x : x + p].reshape(-1, 3))
            gt.append(img[i, :, y : y + p, x : x + p])
        return torch.stack(o).to(img.device), torch.stack(d).to(img.device), torch.stack(gt)

    # ---------------------------------------------------------------- sample
    @torch.no_grad()
    def sample(self, context: Tensor, context_cams: Cameras, target: Cameras, n: int = 1, steps: int | None = None,
               guidance: float | None = None, generator: torch.Generator | None = None,
               temperature: float | None = None, progress: bool = False) -> list[DFMScene]:  # fmt: skip
        """``n`` scenes sampled for the target camera given context views (k, 3, H, W) on the background."""
        c = self.config
        steps = steps or c.sample_steps
        guidance = c.guidance if guidance is None else guidance
        temperature = c.temperature if temperature is None else temperature
        dev = self.device
        hw = tuple(context.shape[-2:])
        target = target[:1].resize(hw[0], hw[1]) if tuple(int(v) for v in target.size[0]) != hw else target[:1]
        ctx = context[None].float().to(dev).expand(n, *context.shape)
        c2w = context_cams.c2w[None].float().to(dev).expand(n, -1, -1, -1)
        K = context_cams.K[None].float().to(dev).expand(n, -1, -1, -1)
        q_c2w, q_K = target.c2w[:1].float().to(dev).expand(n, -1, -1), target.K[:1].float().to(dev).expand(n, -1, -1)
        branches = [ctx] + ([torch.zeros_like(ctx)] if guidance != 1.0 else [])
        cached = []
        for im in branches:
            f = self.context.encode(im)
            cached.append((f, self.estimate(f, c2w, K, q_c2w, q_K, hw)))

        def x0_of(f, est, x_t, t):
            return self.predict_x0(f, est, c2w, K, x_t, torch.full((n,), t, device=dev), q_c2w, q_K)

        def fn(x_t, t):
            out = x0_of(*cached[0], x_t, t)
            if len(cached) > 1:
                out = classifier_free_guidance(out, x0_of(*cached[1], x_t, t), guidance)
            return out

        x_T = torch.randn((n, 3, *hw), generator=generator).to(dev) * temperature
        x0, _ = sample_grid(fn, x_T, self.schedule.grid(steps), self.schedule, "ddim", threshold=c.threshold,
                            progress=progress)  # fmt: skip
        images = ((x0.clamp(-1, 1) + 1) / 2).cpu()
        return [DFMScene(self, context.cpu(), context_cams, images[i], target) for i in range(n)]

    @torch.no_grad()
    def render(self, context: Tensor, context_cams: Cameras, target: Cameras) -> dict[str, Tensor]:
        """The deterministic estimate at ``target`` (the context-only field; no sampling)."""
        return self.context.render(context, context_cams, target)

    @torch.no_grad()
    def eval_grid(self, batch) -> Tensor:
        """Rows: first context view / deterministic estimate / one sample (10 DDIM steps) / ground truth."""
        was = self.training
        self.eval()
        rows = [[], [], [], []]
        g = torch.Generator().manual_seed(0)
        for i in range(batch.query.shape[0]):
            k = batch.context.shape[1] - 1
            ctx, cams, tgt = batch.context[i, :k], batch.context_cameras(i)[:k], batch.query_camera(i)
            rows[0].append(ctx[0].cpu())
            rows[1].append(self.render(ctx, cams, tgt)["rgb"])
            rows[2].append(self.sample(ctx, cams, tgt, 1, steps=10, generator=g)[0].image)
            rows[3].append(batch.query[i].cpu())
        self.train(was)
        return torch.cat([torch.cat(r, -1) for r in rows], -2)


class DFMScene:
    """One sampled 3-D scene: the joint field conditioned on the context views (t = 0) and the sampled target view
    (t = 0). Renders any camera (``render``), and exposes ``density``/``color``/``aabb`` for mesh export."""

    def __init__(self, model: DFM, context: Tensor, context_cams: Cameras, image: Tensor, target: Cameras):
        self.model, self.context, self.context_cams = model, context, context_cams
        self.image, self.target = image, target
        self._scene = None
        dev = model.device
        s = float(scene_scale(context_cams.c2w[None].float())[0]) * model.config.band
        self.aabb = torch.tensor([[-s, -s, -s], [s, s, s]], device=dev)

    def features(self) -> dict:
        if self._scene is None:
            m, dev = self.model, self.model.device
            hw = tuple(self.context.shape[-2:])
            c2w, K = self.context_cams.c2w[None].float().to(dev), self.context_cams.K[None].float().to(dev)
            q_c2w, q_K = self.target.c2w[:1].float().to(dev), self.target.K[:1].float().to(dev)
            with torch.no_grad():
                f = m.context.encode(self.context[None].float().to(dev))
                est = m.estimate(f, c2w, K, q_c2w, q_K, hw)
                x0 = self.image[None].to(dev) * 2 - 1
                self._scene = m.scene(f, c2w, K, est, x0, torch.full((1,), -1, device=dev), q_c2w, q_K)
        return self._scene

    @torch.no_grad()
    def render(self, cam: Cameras, chunk: int = 4096) -> dict[str, Tensor]:
        """rgb (3, h, w), depth (1, h, w) (z, divided by opacity) and opacity (1, h, w) of one camera."""
        scene = self.features()
        hw = tuple(self.context.shape[-2:])
        return render_image(lambda o, d: ray_outputs(self.model.render_scene(scene, hw, o[None], d[None])), cam,
                            chunk, self.model.device)  # fmt: skip

    @torch.no_grad()
    def density(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(σ (P,), points (P, 3)) at world points, seen from the scene's centre outwards (σ depends on it weakly)."""
        sigma, _ = self._query(x, F.normalize(x, dim=-1))
        return sigma, x

    @torch.no_grad()
    def color(self, points: Tensor, dirs: Tensor) -> Tensor:
        return self._query(points, dirs)[1][..., :3]

    def _query(self, x: Tensor, d: Tensor):
        scene = self.features()
        hw = tuple(self.context.shape[-2:])
        scale = scene_scale(scene["c2w"][:, :-1])
        sig, col = self.model.joint.query(scene["feats"], scene["c2w"], scene["K"], hw, x[None].float(),
                                          d[None].float(), scale, scene["temb"])  # fmt: skip
        return sig[0], col[0]


def pixel_variance(scenes: list[DFMScene], cam: Cameras) -> tuple[Tensor, Tensor]:
    """(mean (3, h, w), per-pixel variance (1, h, w), averaged over colour) of the scenes' renders at ``cam``."""
    r = torch.stack([s.render(cam)["rgb"] for s in scenes])
    return r.mean(0), r.var(0, unbiased=len(scenes) > 1).mean(0, keepdim=True)


@torch.no_grad()
def autoregressive(model: DFM, context: Tensor, context_cams: Cameras, orbit: Cameras, steps: int | None = None,
                   generator: torch.Generator | None = None, progress: bool = False) -> DFMScene:  # fmt: skip
    """Sample the orbit's cameras in order, each conditioned on the inputs and every view sampled so far (the
    paper's 360° results); the returned scene is the last one, conditioned on all of them."""
    from tqdm import tqdm

    images, cams = context, context_cams
    scene = None
    for i in tqdm(range(len(orbit)), desc="autoregressive", disable=not progress):
        scene = model.sample(images, cams, orbit[i : i + 1], 1, steps, generator=generator)[0]
        images = torch.cat([images, scene.image[None]])
        cams = Cameras.cat([cams.to(torch.float32), scene.target.to(torch.float32)])
    return scene
