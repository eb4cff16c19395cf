"""A triplane large reconstruction model (LRM, as TripoSR/Real3D), small enough to train on a CPU.

One image in, a triplane out: ViT patch tokens of the input (encoder trained from scratch: no DINO weights
exist here); learned triplane tokens that cross-attend to the image tokens and self-attend; the token planes
upsampled to feature planes; a NeRF MLP on the summed plane features (density exp(x − 1), colour sigmoid) rendered
by volume rendering inside the object box. The input camera is canonical: every other camera is re-expressed
relative to it (:func:`canonical_frame`), so the model never sees absolute poses.

Inputs are composited on grey (``input_background``), targets on white, as in the official code.

Supervised stage on multi-view data (set A): MSE colour ×2 + LPIPS ×1 + mask ×1 on a random ``patch``² patch of the
target view (LPIPS-alex: the VGG weights cannot be had here). With ``self_training`` (Real3D), every step also
reads a batch of single-view objects (set B, ``Batch.single``: the query is the object's only view):

- input view: MSE colour ×0.6 + mask ×0.3 on a patch of the input camera;
- cycle consistency: a curriculum view (|azimuth|, |elevation| ~ U[15°, 15° + p·75°]) is rendered *without
  gradient*, its alpha thresholded at 0.5 and composited on grey, re-encoded, and the original camera rendered from
  it (canon · novel⁻¹ · canon) and supervised with the original image and mask: colour ×20, LPIPS ×10, mask ×10;
- semantic loss: −cos(f(novel), f(input)) with f a frozen image encoder (CLIP cannot be had here): by default the
  ImageNet AlexNet trunk (``semantic_encoder="alexnet"``: pooled conv5, the LPIPS trunk), or the view-invariant
  encoder trained on set A (:mod:`fewview.models.viewenc`, shipped as ``viewenc``), reduced by the max over
  ``semantic_views`` novel views (the least similar one), or
  their mean (``semantic_reduce="mean"``, the naive variant). The novel views are drawn as the official
  ``constraint2_elevation``: azimuth in [0°, 120°] ∪ [240°, 360°], elevation in [0°, 45°] ∪ [315°, 360°], the last
  one replaced by the curriculum view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import look_at
from ..metrics.lpips import PerceptualLoss
from ..pretrained import register_model
from ..render.volume import ray_aabb, weights_from_alpha


@dataclass
class LRMConfig:
    image_size: int = 64  # input resolution
    patch: int = 8
    width: int = 96
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    plane_tokens: int = 8  # tokens per plane side
    plane_res: int = 32  # feature-plane side after upsampling
    plane_channels: int = 16
    hidden: int = 32  # NeRF MLP width
    samples: int = 32  # per ray, uniform in the box
    box: float = 1.0  # the object box half-side (objects are scaled into the unit sphere)
    distance: float = 3.0  # canonical input camera distance to the origin
    w_rgb: float = 2.0
    w_mask: float = 1.0
    w_lpips: float = 1.0
    patch_size: int = 32  # the supervised patch (LPIPS-alex needs at least 32 px)
    background: float = 1.0  # targets
    input_background: float = 0.5  # inputs are composited on grey
    self_training: bool = False  # read set B (single views) as well: Real3D
    multi_view_group: str = "parametric"  # set A
    single_view_group: str = "household"  # set B
    single_view_source: str = "objects"  # objects: each B object's view | pool / pool-curated: cut from clutter
    pool_images: int = 400  # cluttered images of the pool
    pool_depth: str = "depth64"  # the curation's disparity: a depth network (folder or shipped name) | renderer
    w_sv_rgb: float = 0.6
    w_sv_mask: float = 0.3
    w_cycle_rgb: float = 20.0
    w_cycle_lpips: float = 10.0
    w_cycle_mask: float = 10.0
    cycle_threshold: float = 0.5
    cycle_stop_grad: bool = True  # False: the curriculum render keeps its gradient (the "end-to-end" ablation)
    curriculum: bool = True  # False: the pose range is the full one from the first step
    curriculum_low: float = 15.0  # degrees
    curriculum_high: float = 90.0
    w_semantic: float = 1.0
    semantic_views: int = 4
    semantic_size: int = 32  # render side of the semantic views (upsampled to 64 for the encoder)
    semantic_reduce: str = "max"  # max: the least similar view (Real3D) | mean: every view (naive)
    semantic_encoder: str = "alexnet"  # alexnet | viewenc (the shipped view encoder) | a viewenc folder


def canonical_frame(input_c2w: Tensor, distance: float = 3.0) -> Tensor:
    """The rigid map (B, 4, 4) taking the input camera to the canonical one (at (distance, 0, 0), z up, looking
    at the origin): apply it to every camera (T @ c2w) to express it relative to the input view."""
    b = input_c2w.shape[0]
    eye = torch.tensor([distance, 0.0, 0.0], dtype=torch.float64).expand(b, 3)
    canon = look_at(eye, torch.zeros_like(eye), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(b, 3))
    return canon.to(input_c2w) @ torch.linalg.inv(input_c2w)


def _block(w: int, heads: int, cross: bool) -> nn.ModuleDict:
    d = nn.ModuleDict({"norm1": nn.LayerNorm(w), "self": nn.MultiheadAttention(w, heads, batch_first=True),
                       "norm3": nn.LayerNorm(w), "ffn": nn.Sequential(nn.Linear(w, 2 * w), nn.GELU(),
                                                                      nn.Linear(2 * w, w))})  # fmt: skip
    if cross:
        d["norm2"] = nn.LayerNorm(w)
        d["cross"] = nn.MultiheadAttention(w, heads, batch_first=True)
    return d


@register_model("lrm", LRMConfig)
class LRM(nn.Module):
    def __init__(self, config: LRMConfig | None = None):
        super().__init__()
        self.config = c = config or LRMConfig()
        n_patch = (c.image_size // c.patch) ** 2
        self.patch_embed = nn.Conv2d(3, c.width, c.patch, c.patch)
        self.patch_pos = nn.Parameter(torch.randn(1, n_patch, c.width) * 0.02)
        self.encoder = nn.ModuleList([_block(c.width, c.heads, False) for _ in range(c.encoder_layers)])
        self.plane_tokens = nn.Parameter(torch.randn(1, 3 * c.plane_tokens**2, c.width) * 0.02)
        self.decoder = nn.ModuleList([_block(c.width, c.heads, True) for _ in range(c.decoder_layers)])
        up = c.plane_res // c.plane_tokens
        self.upsample = nn.ConvTranspose2d(c.width, c.plane_channels, up, up)
        self.mlp = nn.Sequential(nn.Linear(c.plane_channels, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden),
                                 nn.SiLU(), nn.Linear(c.hidden, 4))  # fmt: skip
        self.perceptual = PerceptualLoss("alex")  # LPIPS is built on first use and holds no state of the model

    @staticmethod
    def _run(blk: nn.ModuleDict, x: Tensor, ctx: Tensor | None = None) -> Tensor:
        h = blk["norm1"](x)
        x = x + blk["self"](h, h, h, need_weights=False)[0]
        if ctx is not None:
            h = blk["norm2"](x)
            x = x + blk["cross"](h, ctx, ctx, need_weights=False)[0]
        return x + blk["ffn"](blk["norm3"](x))

    def triplane(self, image: Tensor) -> Tensor:
        """(B, 3, C, R, R) feature planes (xy, xz, yz) of input images (B, 3, H, W) in [0, 1]."""
        c = self.config
        if image.shape[-2:] != (c.image_size, c.image_size):
            image = F.interpolate(image, size=(c.image_size, c.image_size), mode="area")
        tok = self.patch_embed(image * 2 - 1).flatten(2).transpose(1, 2) + self.patch_pos
        for blk in self.encoder:
            tok = self._run(blk, tok)
        x = self.plane_tokens.expand(image.shape[0], -1, -1)
        for blk in self.decoder:
            x = self._run(blk, x, tok)
        b, t = x.shape[0], c.plane_tokens
        planes = x.reshape(b * 3, t, t, c.width).permute(0, 3, 1, 2)
        return self.upsample(planes).reshape(b, 3, c.plane_channels, c.plane_res, c.plane_res)

    def query(self, planes: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Density (B, P) and colour (B, P, 3) at points x (B, P, 3) in the canonical frame."""
        c = self.config
        p = (x / c.box).clamp(-1, 1)
        coords = torch.stack([p[..., [0, 1]], p[..., [0, 2]], p[..., [1, 2]]], 1)  # (B, 3, P, 2)
        b = x.shape[0]
        f = F.grid_sample(planes.flatten(0, 1), coords.flatten(0, 1)[:, None], mode="bilinear", align_corners=False)
        f = f.reshape(b, 3, c.plane_channels, -1).sum(1).transpose(1, 2)  # (B, P, C)
        o = self.mlp(f)
        inside = (x.abs() <= c.box).all(-1)  # nothing outside the object box (renders only sample inside it)
        return torch.exp(o[..., 0] - 1.0) * inside, torch.sigmoid(o[..., 1:])

    def render_rays(self, planes: Tensor, origins: Tensor, dirs: Tensor, noise: Tensor | None = None) -> dict:
        """Colour (B, R, 3), opacity (B, R) and depth of rays (B, R, 3) in the canonical frame."""
        c = self.config
        b, r = origins.shape[:2]
        box = torch.tensor([[-c.box] * 3, [c.box] * 3], dtype=origins.dtype, device=origins.device)
        near, far, hit = ray_aabb(origins.reshape(-1, 3), dirs.reshape(-1, 3), box)
        near, far = near.reshape(b, r), torch.where(hit, far, near).reshape(b, r)
        u = torch.arange(c.samples, device=origins.device, dtype=origins.dtype)
        u = (u + (noise[..., : c.samples] if noise is not None else 0.5)) / c.samples
        t = near[..., None] + (far - near)[..., None] * u
        pts = origins[:, :, None] + dirs[:, :, None] * t[..., None]
        sigma, rgb = self.query(planes, pts.reshape(b, -1, 3))
        sigma, rgb = sigma.reshape(b, r, -1), rgb.reshape(b, r, -1, 3)
        delta = ((far - near) / c.samples)[..., None].expand_as(sigma)
        w, _ = weights_from_alpha((1 - torch.exp(-sigma * delta)).flatten(0, 1))
        w = w.reshape(b, r, -1)
        acc = w.sum(-1)
        colour = (w[..., None] * rgb).sum(-2) + (1 - acc)[..., None] * c.background
        return {"rgb": colour, "opacity": acc, "depth": (w * t).sum(-1)}

    @property
    def data_group(self) -> str:
        """The objects of supervised training: set A only (set B is read one view per object, when self-training)."""
        return self.config.multi_view_group

    @property
    def self_training_groups(self) -> dict | None:
        """:class:`~fewview.train.data.SelfTrainingSource`'s options (set A's group, set B's group and source) when
        self-training: the trainer then pairs A with single views of B."""
        c = self.config
        if not c.self_training:
            return None
        return {"multi_view": c.multi_view_group, "single_view": c.single_view_group, "pool": c.single_view_source,
                "pool_images": c.pool_images, "pool_depth": c.pool_depth}  # fmt: skip

    def semantic_features(self, images: Tensor) -> Tensor:
        """Unit features of images in [0, 1]: the frozen AlexNet trunk's pooled conv5 at 64² (N, 256), or the
        frozen view-invariant encoder named by ``semantic_encoder`` (:mod:`fewview.models.viewenc`)."""
        if self.config.semantic_encoder != "alexnet":
            return self._view_encoder(images.device).features(images)
        x = F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False)
        lp = self.perceptual.lpips.to(images.device)
        return F.normalize(lp.features(x * 2 - 1)[-1].mean((-2, -1)), dim=-1)

    def _view_encoder(self, device) -> nn.Module:
        """The frozen view encoder, loaded on first use and kept out of the state_dict (never saved with the LRM)."""
        enc = self.__dict__.get("_viewenc")
        if enc is None:
            from ..pretrained import from_pretrained, resolve_model_dir

            enc = from_pretrained(resolve_model_dir(self.config.semantic_encoder)).eval().requires_grad_(False)
            if getattr(enc, "model_name", "") != "viewenc":
                raise ValueError(f"semantic encoder {self.config.semantic_encoder!r} is not a viewenc model")
            self.__dict__["_viewenc"] = enc
        return enc.to(device)

    def on_grey(self, image: Tensor, mask: Tensor | None) -> Tensor:
        """Images (B, 3, H, W) on the training background recomposited on the input background."""
        if mask is None:
            return image
        return image * mask + self.config.input_background * (1 - mask)

    def render_patch(self, planes: Tensor, c2w: Tensor, K: Tensor, hw, corners: list, p: int, noise=None) -> dict:
        """Render a p×p patch at each item's corner (y, x) of cameras (B, 4, 4) in the canonical frame:
        rgb (B, 3, p, p), opacity (B, 1, p, p)."""
        from ..cameras import Cameras, camera_rays

        rays = camera_rays(Cameras(c2w, K, torch.tensor(list(hw))))
        o = torch.stack([rays.origins[i, y : y + p, x : x + p].reshape(-1, 3) for i, (y, x) in enumerate(corners)])
        d = torch.stack([rays.directions[i, y : y + p, x : x + p].reshape(-1, 3) for i, (y, x) in enumerate(corners)])
        out = self.render_rays(planes, o.to(planes.device), d.to(planes.device), noise)
        b = len(corners)
        rgb = out["rgb"].reshape(b, p, p, 3).permute(0, 3, 1, 2)
        return {"rgb": rgb, "opacity": out["opacity"].reshape(b, 1, p, p)}

    def image_losses(self, out: dict, rgb: Tensor, mask: Tensor, w_rgb: float, w_lpips: float, w_mask: float,
                     prefix: str) -> tuple[Tensor, dict]:  # fmt: skip
        mse = F.mse_loss(out["rgb"], rgb)
        m = F.mse_loss(out["opacity"], mask)
        loss = w_rgb * mse + w_mask * m
        logs = {f"{prefix}mse": float(mse.detach()), f"{prefix}mask": float(m.detach())}
        if w_lpips > 0 and min(rgb.shape[-2:]) >= 32:
            lp = self.perceptual(out["rgb"], rgb)
            loss = loss + w_lpips * lp
            logs[f"{prefix}lpips"] = float(lp.detach())
        return loss, logs

    def _corners(self, gens, hw, p: int) -> list:
        h, w = hw
        return [(int(torch.randint(0, h - p + 1, (), generator=g)), int(torch.randint(0, w - p + 1, (), generator=g)))
                for g in gens]  # fmt: skip

    def forward(self, batch) -> tuple[Tensor, dict[str, float]]:
        """Supervised stage on multi-view data (the first context view is the input, the query the target), plus the
        self-training losses on ``batch.single`` when present."""
        c = self.config
        hw = tuple(batch.query.shape[-2:])
        p = min(c.patch_size, *hw)
        gens = batch.item_generators()
        T = canonical_frame(batch.context_c2w[:, 0].double(), c.distance)
        q_c2w = (T @ batch.query_c2w.double()).float()
        cm = None if batch.context_mask is None else batch.context_mask[:, 0]
        planes = self.triplane(self.on_grey(batch.context[:, 0], cm))
        corners = self._corners(gens, hw, p)
        out = self.render_patch(planes, q_c2w, batch.query_K, hw, corners, p)
        rgb, mask = _crop(batch.query, corners, p), _crop(batch.query_mask, corners, p)
        loss, logs = self.image_losses(out, rgb, mask, c.w_rgb, c.w_lpips, c.w_mask, "")
        if batch.single is not None:
            sl, slogs = self.self_training_loss(batch.single, batch.progress)
            loss = loss + sl
            logs.update(slogs)
        return loss, logs

    def novel_cameras(self, K: Tensor, azimuth: Tensor, elevation: Tensor, hw) -> Tensor:
        """c2w (N, 4, 4) of cameras at ``azimuth``/``elevation`` (radians) around the object in the canonical frame
        (the input camera is azimuth 0, elevation 0), at the canonical distance."""
        from ..cameras import spherical_cameras

        return spherical_cameras(azimuth, elevation, self.config.distance, 1.0, hw[0]).c2w.float()

    def self_training_loss(self, single, progress: float) -> tuple[Tensor, dict[str, float]]:
        """Real3D's losses on single-view objects: input view, cycle consistency, semantic."""
        from ..cameras import curriculum_angles, cycle_pose

        c = self.config
        b = single.query.shape[0]
        hw = tuple(single.query.shape[-2:])
        p = min(c.patch_size, *hw)
        gens = single.item_generators()
        dev = single.query.device
        img, mask, K = single.query, single.query_mask, single.query_K
        canon = self.novel_cameras(K, torch.zeros(b), torch.zeros(b), hw).to(dev)
        planes = self.triplane(self.on_grey(img, mask))
        logs: dict[str, float] = {}
        # 1. the input view
        corners = self._corners(gens, hw, p)
        out = self.render_patch(planes, canon, K, hw, corners, p)
        loss, lg = self.image_losses(out, _crop(img, corners, p), _crop(mask, corners, p), c.w_sv_rgb, 0.0,
                                     c.w_sv_mask, "sv_")  # fmt: skip
        logs.update(lg)
        # 2. cycle consistency: the curriculum view, rendered without gradient, becomes the input
        angles = [curriculum_angles(progress if c.curriculum else 1.0, 1, c.curriculum_low, c.curriculum_high, g)
                  for g in gens]  # fmt: skip
        az = torch.cat([a for a, _ in angles]).float()
        el = torch.cat([e for _, e in angles]).float()
        novel = self.novel_cameras(K, az, el, hw).to(dev)
        if c.w_cycle_rgb or c.w_cycle_lpips or c.w_cycle_mask:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not c.cycle_stop_grad):
                rend = self.render_image(planes.detach() if c.cycle_stop_grad else planes, novel, K, hw)
                keep = (rend["opacity"] > c.cycle_threshold).float()
                new_input = rend["rgb"] * keep + c.input_background * (1 - keep)
            planes2 = self.triplane(new_input)
            back = cycle_pose(canon.double(), novel.double()).float()
            corners = self._corners(gens, hw, p)
            out = self.render_patch(planes2, back, K, hw, corners, p)
            cyc, lg = self.image_losses(out, _crop(img, corners, p), _crop(mask, corners, p), c.w_cycle_rgb,
                                        c.w_cycle_lpips, c.w_cycle_mask, "cycle_")  # fmt: skip
            loss = loss + cyc
            logs.update(lg)
        # 3. semantic: the least similar of the novel views to the input
        if c.w_semantic > 0 and c.semantic_views > 0:
            m = c.semantic_views
            draws = [_constrained_views(m - 1, g) for g in gens]
            az_s = torch.stack([torch.cat([d[0], az[i : i + 1]]) for i, d in enumerate(draws)]).float()
            el_s = torch.stack([torch.cat([d[1], el[i : i + 1]]) for i, d in enumerate(draws)]).float()
            s = c.semantic_size
            Ks = K.clone()
            Ks[:, :2] *= s / hw[0]
            cams = self.novel_cameras(Ks, az_s.flatten(), el_s.flatten(), (s, s)).to(dev)
            planes_rep = planes.repeat_interleave(m, 0)
            views = self.render_image(planes_rep, cams, Ks.repeat_interleave(m, 0), (s, s))["rgb"]
            f_novel = self.semantic_features(views).reshape(b, m, -1)
            with torch.no_grad():
                f_in = self.semantic_features(img)
            sim = (f_novel * f_in[:, None]).sum(-1)  # (B, m)
            red = (-sim).amax(1) if c.semantic_reduce == "max" else (-sim).mean(1)
            sem = red.mean()
            loss = loss + c.w_semantic * sem
            logs["semantic"] = float(sem.detach())
        return loss, logs

    def render_image(self, planes: Tensor, c2w: Tensor, K: Tensor, hw) -> dict:
        """Full renders rgb (B, 3, h, w), opacity (B, 1, h, w) of cameras (B, 4, 4) in the canonical frame."""
        from ..cameras import Cameras, camera_rays

        b = c2w.shape[0]
        rays = camera_rays(Cameras(c2w, K, torch.tensor(list(hw))))
        o, d = rays.origins.reshape(b, -1, 3).to(planes.device), rays.directions.reshape(b, -1, 3).to(planes.device)
        out = self.render_rays(planes, o, d)
        h, w = hw
        return {"rgb": out["rgb"].reshape(b, h, w, 3).permute(0, 3, 1, 2),
                "opacity": out["opacity"].reshape(b, 1, h, w)}  # fmt: skip
    @torch.no_grad()
    def render(self, image: Tensor, input_cam, target) -> dict[str, Tensor]:
        """rgb (3, h, w), depth and opacity of camera ``target`` from one input image (3, H, W), or the first of
        (n, 3, H, W), seen by ``input_cam`` (its first camera); the image on the input background."""
        return self.scene(image, input_cam).render(target)

    @torch.no_grad()
    def scene(self, image: Tensor, input_cam) -> TriplaneScene:
        """The reconstructed object in world coordinates: renders any camera, exports a mesh."""
        image = image[0] if image.dim() == 4 else image
        dev = next(self.parameters()).device
        T = canonical_frame(input_cam.c2w[:1].double(), self.config.distance)[0]
        return TriplaneScene(self, self.triplane(image[None].float().to(dev)), T)


class TriplaneScene:
    """One LRM reconstruction: its triplane and the rigid map T from world to the canonical frame. ``render`` takes
    world cameras; ``density``/``color``/``aabb`` (world) let :func:`fewview.export.extract_mesh` run on it."""

    def __init__(self, model: LRM, planes: Tensor, T: Tensor):
        self.model, self.planes, self.T = model, planes, T
        b = model.config.box
        corners = torch.tensor([[x, y, z] for x in (-b, b) for y in (-b, b) for z in (-b, b)], dtype=torch.float64)
        inv = torch.linalg.inv(T)
        world = corners @ inv[:3, :3].T + inv[:3, 3]
        self.aabb = torch.stack([world.min(0).values, world.max(0).values]).float().to(planes.device)

    def _canon(self, x: Tensor) -> Tensor:
        T = self.T.to(x.device, torch.float64)
        return (x.double() @ T[:3, :3].T + T[:3, 3]).float()

    @torch.no_grad()
    def density(self, x: Tensor) -> tuple[Tensor, Tensor]:
        sigma, rgb = self.model.query(self.planes, self._canon(x)[None])
        return sigma[0], rgb[0]

    @torch.no_grad()
    def color(self, aux: Tensor, dirs: Tensor) -> Tensor:
        return aux  # the triplane's colour does not depend on the viewing direction

    @torch.no_grad()
    def render(self, target, chunk: int = 8192) -> dict[str, Tensor]:
        from ..render.image import render_image
        from .pixelnerf import ray_outputs

        cam = type(target)((self.T @ target.c2w[:1].double()).float(), target.K[:1].float(), target.size[:1])
        return render_image(lambda o, d: ray_outputs(self.model.render_rays(self.planes, o[None], d[None])), cam,
                            chunk, self.planes.device)  # fmt: skip


def _crop(x: Tensor, corners: list, p: int) -> Tensor:
    return torch.stack([x[i, :, y : y + p, xx : xx + p] for i, (y, xx) in enumerate(corners)])


def _constrained_views(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` (azimuth, elevation) pairs in radians as the official ``constraint2_elevation``: azimuth in
    [0°, 120°] ∪ [240°, 360°], elevation in [0°, 45°] ∪ [315°, 360°]."""
    az = torch.rand(n, generator=g) * 240.0
    az = torch.where(az > 120.0, az + 120.0, az)
    el = torch.rand(n, generator=g) * 90.0
    el = torch.where(el > 45.0, el + 270.0, el)
    return torch.deg2rad(az), torch.deg2rad(el)
