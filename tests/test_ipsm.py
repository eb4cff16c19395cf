"""IPSM: pseudo views, the inline prior's warp and masks, the score terms' gradients, the depth loss, a smoke fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fewview.cameras import Cameras, annealed_sigmas, camera_rays, intrinsics_matrix, pseudo_views
from fewview.diffusion.masks import ipsm_warp, minmax_normalise
from fewview.diffusion.schedule import NoiseSchedule
from fewview.guidance import ScorePrior, ipsm_terms, sds_terms
from fewview.models.depth import DepthConfig, DepthNet, align_affine, pearson, ssi_loss

from .helpers import kill_at, make_cams

EXAMPLE = Path(__file__).resolve().parents[1] / "fewview" / "assets" / "example_object"


# ------------------------------------------------------------------ pseudo views
def test_pseudo_views_anneal_in_draw_order():
    cams = make_cams(n=3)
    target = torch.tensor([0.1, -0.05, 0.2])
    n, scale = 50, 3.0
    pv = pseudo_views(cams, n, target, scale, (0.01, 0.05), torch.Generator().manual_seed(7))
    # sigma_i = 0.05 * max(0.2, (i + 1) / n) * scale: 0.01 of the scale for the first fifth, then rising to 0.05
    want = [0.05 * max(0.2, (i + 1) / n) * scale for i in range(n)]
    assert torch.allclose(pv.sigmas, torch.tensor(want, dtype=torch.float64))
    assert torch.allclose(annealed_sigmas(5), torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05], dtype=torch.float64))
    # the same draws again: each camera is its closest input moved by noise * sigma_i, looking at target + noise
    g = torch.Generator().manual_seed(7)
    closest = torch.randint(0, 3, (n,), generator=g)
    noise = torch.randn(n, 2, 3, generator=g, dtype=torch.float64)
    assert torch.equal(pv.closest, closest)
    eye = cams.c2w.double()[closest, :3, 3] + noise[:, 0] * pv.sigmas[:, None]
    assert torch.allclose(pv.cameras.c2w[:, :3, 3].double(), eye, atol=1e-5)
    tgt = target.double() + noise[:, 1] * pv.sigmas[:, None]
    axis = pv.cameras.c2w[:, :3, 2].double()
    to_tgt = torch.nn.functional.normalize(tgt - eye, dim=-1)
    assert torch.allclose(axis, to_tgt, atol=1e-5)
    # early draws stay closer to their input camera than late ones
    moved = (pv.cameras.c2w[:, :3, 3].double() - cams.c2w.double()[closest, :3, 3]).norm(dim=-1)
    assert moved[:10].mean() < moved[-10:].mean()


# -------------------------------------------------------------------- the warp
def plane_depth(cams: Cameras, n: torch.Tensor, d: float) -> torch.Tensor:
    """z-depth (B,1,H,W) of the plane n.x = d seen by ``cams`` (analytic ray/plane intersection)."""
    rays = camera_rays(cams, dtype=torch.float64)
    t = (d - rays.origins @ n) / (rays.directions @ n)
    pts = rays.origins + t[..., None] * rays.directions
    w2c = torch.linalg.inv(cams.c2w.double())
    z = torch.einsum("bj,bhwj->bhw", w2c[:, 2, :3], pts) + w2c[:, 2, 3][:, None, None]
    return z[:, None].float(), pts


def test_warp_lands_where_the_analytic_reprojection_says():
    cams = make_cams(n=2, h=40, w=48)
    n = torch.tensor([0.2, -0.1, 1.0], dtype=torch.float64)
    n = n / n.norm()
    depth, pts = plane_depth(cams, n, 0.1)
    h, w = 40, 48
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    code = torch.stack([u, v, torch.zeros_like(u)])[None]  # the source image holds its own pixel indices
    warped, ds, (m_prior, m_strict) = ipsm_warp(depth[:1], cams.c2w[:1], cams.K[:1], code, depth[1:],
                                                cams.c2w[1:], cams.K[1:], (0.3, 0.1))  # fmt: skip
    uv, z = cams[1].project(pts[0].reshape(1, -1, 3).float())
    uv = uv.reshape(h, w, 2)
    inside = (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0) & (uv[..., 1] < h) & (z.reshape(h, w) > 0)
    assert inside.float().mean() > 0.5
    got = warped[0, :2].permute(1, 2, 0)
    want = torch.floor(uv)
    # every pixel that lands inside reads the source pixel the analytic projection falls in (a pixel exactly on
    # a boundary may round either way in float32)
    close = (got - want).abs().max(-1).values[inside] <= 1
    exact = (got == want).all(-1)[inside].float().mean()
    assert close.all() and exact > 0.99
    # the warped source depth is the source's z of that point
    assert torch.allclose(ds[0, 0][inside], depth[1, 0][want[..., 1][inside].long(), want[..., 0][inside].long()])


def test_minmax_masks_on_a_constructed_depth_pair():
    """Same camera for both views: source depths [1, 2.8, 4.6, 4, 5, -] against target [1, 2, 3, 4, 5, 0];
    min-max normalised, [0, .45, .9, .75, 1] vs [0, .25, .5, .75, 1]: differences [0, .2, .4, 0, 0]."""
    c2w = torch.eye(4)[None]
    K = intrinsics_matrix(10.0, 10.0, 3.0, 0.5)[None].float()
    dt = torch.tensor([1.0, 2, 3, 4, 5, 0]).view(1, 1, 1, 6)
    ds = torch.tensor([1.0, 2.8, 4.6, 4, 5, 3]).view(1, 1, 1, 6)
    img = torch.arange(6.0).view(1, 1, 1, 6)
    warped, wd, (prior, strict) = ipsm_warp(dt, c2w, K, img, ds, c2w, K, (0.3, 0.1))
    assert prior.flatten().tolist() == [True, True, False, True, True, False]
    assert strict.flatten().tolist() == [True, False, False, True, True, False]
    assert warped.flatten().tolist() == [0, 1, 2, 3, 4, 0]  # identity warp; nothing behind an empty pixel
    assert torch.allclose(minmax_normalise(ds, ds > 0).flatten(), torch.tensor([0, 0.45, 0.9, 0.75, 1, 0.5]))
    # fewview's relative test instead: only depths within 5 % of each other agree
    _, _, (rel, _) = ipsm_warp(dt, c2w, K, img, ds, c2w, K, (0.3, 0.1), test="relative")
    assert rel.flatten().tolist() == [True, False, False, True, True, False]


# ----------------------------------------------------------------- score terms
class ToyPrior:
    """ε-prediction 'model' with a closed form: ε̂ = tanh(a·x_t + b·t/T) with (a, b) from the condition."""

    def __init__(self):
        self.schedule = NoiseSchedule(1000, "scaled_linear", prediction_type="epsilon")

    def predict(self, x_t, t, cond=None, guidance=1.0):
        a, b = (cond or {"ab": (0.7, 0.1)})["ab"]
        return torch.tanh(a * x_t + b * float(t) / 1000)


def test_score_terms_gradients_equal_the_formula():
    torch.manual_seed(0)
    model = ToyPrior()
    rect, plain = ScorePrior(model, {"ab": (0.9, 0.3)}), ScorePrior(model, {"ab": (0.5, -0.2)})
    enc = torch.nn.Conv2d(3, 4, 2, 2).double()  # stands in for the VAE's encoder: the render reaches z through it
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    z = enc(x)
    noise = torch.randn_like(z)
    t = 400
    terms = ipsm_terms(rect, plain, z, t, noise, 0.2, 2.0, "ipsm")
    (gz,) = torch.autograd.grad(sum(terms.values()), z, retain_graph=True)
    a = model.schedule.alpha_bar(t, z)
    x_t = model.schedule.add_noise(z.detach(), noise, torch.tensor([t]))
    e_rect, e_plain = rect.eps(x_t, t), plain.eps(x_t, t)
    want = (0.2 * a * (e_rect - noise) + 2.0 * a * (e_rect - e_plain)) / z.numel()
    assert torch.allclose(gz, want, atol=1e-12)
    # through the encoder, by central finite differences of the loss with its stop-gradient targets held fixed
    (gx,) = torch.autograd.grad(sum(terms.values()), x)
    targets = [(z - a * (e_rect - noise)).detach(), (z - a * (e_rect - e_plain)).detach()]

    def fixed(xx):
        zz = enc(xx)
        return 0.2 * 0.5 * ((zz - targets[0]) ** 2).mean() + 2.0 * 0.5 * ((zz - targets[1]) ** 2).mean()

    h = 1e-6
    for idx in [(0, 0, 0, 0), (0, 1, 3, 5), (0, 2, 7, 7)]:
        e = torch.zeros_like(x)
        e[idx] = h
        fd = (fixed(x.detach() + e) - fixed(x.detach() - e)) / (2 * h)
        assert abs(float(fd) - float(gx[idx])) < 1e-8 + 1e-6 * abs(float(fd))
    # SDS with DreamFusion's weighting 1 - alpha_bar
    s = sds_terms(plain, z, t, noise, "sds", 1.0)
    (gs,) = torch.autograd.grad(s["sds"], z)
    assert torch.allclose(gs, (1 - a) * (e_plain - noise) / z.numel(), atol=1e-12)


# ----------------------------------------------------------------- depth net
def test_scale_shift_invariant_loss_is_zero_for_an_affine_copy():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 16, 16, generator=g) + 0.1
    assert float(ssi_loss(3.0 * target - 0.7, target)) < 1e-5
    assert float(ssi_loss(0.25 * target + 2.0, target)) < 1e-5
    assert float(ssi_loss(torch.rand(2, 1, 16, 16, generator=g), target)) > 0.3
    mask = torch.rand(2, 1, 16, 16, generator=g) > 0.5
    assert torch.allclose(align_affine(2 * target + 1, target, mask), target, atol=1e-5)
    assert torch.allclose(pearson(-2 * target + 5, target), torch.tensor([-1.0, -1.0]), atol=1e-5)


def test_depth_net_learns_a_ramp():
    """A few steps take the untrained network's SSI loss down on one image whose disparity is a ramp."""
    torch.manual_seed(0)
    net = DepthNet(DepthConfig(widths=(8, 16)))
    x = torch.linspace(0, 1, 16)
    rgb = torch.stack([x.expand(16, 16), x.expand(16, 16).T, 0.5 * torch.ones(16, 16)])[None]
    target = (1 + x.expand(16, 16))[None, None]
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    first = float(ssi_loss(net.predict(rgb), target))
    for _ in range(60):
        loss = ssi_loss(net.predict(rgb), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


# ------------------------------------------------------------------ smoke fit
@pytest.fixture(scope="module")
def depth_model(tmp_path_factory):
    from fewview.pretrained import save_pretrained

    torch.manual_seed(0)
    return save_pretrained(DepthNet(DepthConfig(widths=(8, 16))), tmp_path_factory.mktemp("depth") / "depth")


def test_ipsm_smoke_fit_with_every_term(tmp_path, depth_model):
    from fewview.methods.ipsm import IPSMConfig
    from fewview.methods.protocol_run import run_protocol

    cfg = IPSMConfig(steps=12, ipsm_start=0.25, ipsm_end=1.0, ipsm_ramp=0.01, ipsm_depth_model=str(depth_model),
                     checkpoint_every=6)  # fmt: skip
    rec = run_protocol(EXAMPLE, "blender-split", tmp_path / "run", cfg, progress=False, lpips=False)
    assert rec["method"] == "ipsm" and np.isfinite(rec["means"]["psnr"])
    meta = json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())
    last = meta["history"][-1]
    for k in ("ipsm_rectified", "ipsm_difference", "depth_pseudo", "geometry", "depth"):
        assert k in last and np.isfinite(last[k]), k
    # the priors are never part of the scene's checkpoint
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoint").iterdir())
    assert not any("prior" in f or "depth" in f or "unet" in f for f in files), files


def test_ipsm_term_reaches_the_gaussians(depth_model):
    from fewview.data import load_blender
    from fewview.methods.ipsm import IPSMConfig, IPSMFitter

    scene = load_blender(EXAMPLE, "train")
    cfg = IPSMConfig(steps=10, ipsm_start=0.0, ipsm_end=1.0, ipsm_depth_model=str(depth_model), ipsm_w_depth=0,
                     ipsm_w_depth_pseudo=0, ipsm_w_geometry=0)  # fmt: skip
    fit = IPSMFitter(scene, list(range(len(scene))), cfg)
    fit.step = 5
    terms = fit.pseudo_terms()
    assert set(terms) == {"ipsm_rectified", "ipsm_difference"}
    sum(terms.values()).backward()
    assert fit.state.model.means.grad is not None and fit.state.model.means.grad.abs().sum() > 0
    assert fit.state.model.sh_dc.grad.abs().sum() > 0


def test_ipsm_fit_resumes_exactly(tmp_path, depth_model, monkeypatch):
    """Stopped after its step-6 checkpoint and rerun, an IPSM fit ends where an uninterrupted one does: the
    pseudo views and each step's (t, noise) are functions of the seed and the step. (Thread counts are held
    fixed: adapting them to the machine's load changes the order of floating-point sums.)"""
    monkeypatch.setenv("FEWVIEW_ADAPT_THREADS", "0")
    from fewview.data import load_blender
    from fewview.methods.ipsm import IPSMConfig, IPSMFitter

    scene = load_blender(EXAMPLE, "train")
    cfg = IPSMConfig(steps=10, ipsm_start=0.2, ipsm_end=1.0, ipsm_depth_model=str(depth_model), checkpoint_every=6)
    full = IPSMFitter(scene, [0, 1, 2], cfg, tmp_path / "full").run(progress=False)
    kill_at(IPSMFitter(scene, [0, 1, 2], cfg, tmp_path / "cut"), 7)
    resumed = IPSMFitter(scene, [0, 1, 2], cfg, tmp_path / "cut").run(progress=False)
    a, b = full.model.tensors(), resumed.model.tensors()
    assert json.loads((tmp_path / "cut" / "checkpoint" / "meta.json").read_text())["step"] == 10
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
