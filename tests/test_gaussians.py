"""3D Gaussian splatting: analytic footprints, compositing order, finite-difference gradients, fast path
equal to the reference, SH basis, densification bookkeeping, PLY round trip, smoke fits and CLI."""

import json
import math

import numpy as np
import pytest
import torch

from fewview.cameras import Cameras, intrinsics_matrix
from fewview.gaussians import (
    DefaultStrategy,
    DensifyConfig,
    GaussianModel,
    eval_sh,
    gsplat_available,
    load_ply,
    rasterize,
    rgb_to_sh,
    save_ply,
    sh_basis,
)
from fewview.gaussians.project import ALPHA_MIN, isotropic_footprint
from fewview.gaussians.sh import sh_basis_reference
from fewview.methods.fit_config import FitConfig
from fewview.methods.scene_fit import load_fit, make_fitter

from .helpers import kill_at, make_cams
from .test_fit import tiny_scene

BACKENDS = ("numba", "torch")


def axis_camera(h=33, w=41, f=40.0, dtype=torch.float64) -> Cameras:
    """Camera at the origin looking down +z (OpenCV), principal point at the image centre."""
    K = intrinsics_matrix(f, f, w / 2, h / 2).to(dtype)
    return Cameras(torch.eye(4, dtype=dtype)[None], K[None], torch.tensor([[h, w]]))


def random_gaussians(n=40, seed=0, dtype=torch.float64, sh_k=16):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g, dtype=dtype) * torch.tensor([2.0, 1.6, 1.0], dtype=dtype)
    means = means - torch.tensor([1.0, 0.8, -2.5], dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = 0.05 + 0.15 * torch.rand(n, 3, generator=g, dtype=dtype)
    opac = 0.1 + 0.6 * torch.rand(n, generator=g, dtype=dtype)
    sh = 0.3 * torch.randn(n, sh_k, 3, generator=g, dtype=dtype)
    return [means, quats, scales, opac, sh]


@pytest.mark.parametrize("backend", BACKENDS)
def test_isotropic_gaussian_renders_the_analytic_footprint(backend):
    cam = axis_camera()
    z, sigma, o, f = 3.0, 0.12, 0.8, 40.0
    means = torch.tensor([[0.0, 0.0, z]], dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64)
    scales = torch.full((1, 3), sigma, dtype=torch.float64)
    color = torch.tensor([[0.2, 0.5, 0.9]], dtype=torch.float64)
    r = rasterize(means, quats, scales, torch.tensor([o], dtype=torch.float64), color, cam, backend=backend)
    s = isotropic_footprint(sigma, z, f)
    ys, xs = torch.meshgrid(torch.arange(33.0, dtype=torch.float64), torch.arange(41.0, dtype=torch.float64),
                            indexing="ij")  # fmt: skip
    r2 = (xs + 0.5 - 20.5) ** 2 + (ys + 0.5 - 16.5) ** 2
    alpha = o * torch.exp(-r2 / (2 * s * s))
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
    torch.testing.assert_close(r.alpha[0], alpha, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(r.rgb, color[0][:, None, None] * alpha, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(r.depth[0], z * alpha, atol=1e-9, rtol=1e-9)
    assert r.alpha[0, 16, 20] == pytest.approx(o * math.exp(0.0))  # the centre pixel sits on the mean


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_overlapping_gaussians_composite_front_to_back(backend):
    cam = axis_camera()
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 4.0]], dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=torch.float64)
    scales = torch.tensor([[0.1] * 3, [0.2] * 3], dtype=torch.float64)
    opac = torch.tensor([0.7, 0.9], dtype=torch.float64)
    cols = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64)
    bg = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    for perm in ([0, 1], [1, 0]):  # input order must not matter: depth does
        r = rasterize(means[perm], quats[perm], scales[perm], opac[perm], cols[perm], cam, background=bg,
                      backend=backend)  # fmt: skip
        a1, a2 = 0.7, 0.9  # both centred on pixel (16, 20)
        want = a1 * cols[0] + (1 - a1) * a2 * cols[1] + (1 - a1) * (1 - a2) * bg
        torch.testing.assert_close(r.rgb[:, 16, 20], want, atol=1e-12, rtol=0)
        assert float(r.depth[0, 16, 20]) == pytest.approx(a1 * 2.0 + (1 - a1) * a2 * 4.0)
        assert float(r.alpha[0, 16, 20]) == pytest.approx(1 - (1 - a1) * (1 - a2))


def test_early_termination_stops_before_transmittance_falls_below_1e4():
    cam = axis_camera(h=9, w=9, f=10.0)  # pixel (4, 4) is centred on the optical axis
    n = 6
    means = torch.tensor([[0.0, 0.0, 2.0 + i] for i in range(n)], dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * n, dtype=torch.float64)
    scales = torch.full((n, 3), 1.0, dtype=torch.float64)
    opac = torch.full((n,), 0.99, dtype=torch.float64)  # exp(power) ~ 1 at the centre: alpha clamps to 0.99
    cols = torch.eye(3, dtype=torch.float64).repeat(2, 1)
    for backend in BACKENDS:
        r = rasterize(means, quats, scales, opac, cols, cam, backend=backend)
        # T after 2 Gaussians is 1e-4 (kept: not below); a 3rd would give 1e-6, so it and later ones are skipped.
        a = float(r.alpha[0, 4, 4])
        assert 1 - a == pytest.approx(0.01**2, rel=1e-9) and float(r.rgb[2, 4, 4]) == 0.0
        torch.testing.assert_close(r.rgb[:2, 4, 4], torch.tensor([0.99, 0.0099], dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_finite_differences(backend):
    cam = axis_camera(h=18, w=22, f=14.0)
    args = [a.requires_grad_() for a in random_gaussians(12, seed=3)]
    w = torch.rand(5, 18, 22, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def f(means, quats, scales, opac, sh):
        r = rasterize(means, quats, scales, opac, sh, cam, sh_degree=3, background=(0.3, 0.6, 0.9), backend=backend)
        return (torch.cat([r.rgb, r.depth, r.alpha]) * w).sum()

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_fast_path_equals_reference_in_outputs_and_gradients():
    cam = make_cams(n=1, h=64, w=72, f=70.0)
    out = {}
    for backend in BACKENDS:
        g = random_gaussians(600, seed=5, dtype=torch.float32)
        g[0] = g[0] * 0.7 - torch.tensor([0.0, 0.0, 2.5])  # around the orbit's centre
        args = [a.requires_grad_() for a in g]
        r = rasterize(*args, cam, sh_degree=3, background=(1.0, 1.0, 1.0), backend=backend)
        wts = torch.rand(5, 64, 72, generator=torch.Generator().manual_seed(2))
        (torch.cat([r.rgb, r.depth, r.alpha]) * wts).sum().backward()
        out[backend] = [t.detach() for t in (r.rgb, r.depth, r.alpha)] + [a.grad for a in args]
        assert len(r.ids) > 300
    for a, b in zip(out["numba"], out["torch"], strict=True):
        torch.testing.assert_close(a, b, atol=2e-5 * float(b.abs().max()), rtol=1e-4)


def test_fused_projection_and_numba_binning_equal_the_pytorch_versions():
    from fewview.gaussians.project import project
    from fewview.gaussians.project_numba import project_fused
    from fewview.gaussians.raster_numba import bin_tiles_numba
    from fewview.gaussians.tiles import bin_tiles

    cam = make_cams(n=1, h=64, w=72, f=70.0)
    g = random_gaussians(400, seed=7)
    g[0] = g[0] * torch.tensor([2.5, 2.5, 0.7], dtype=torch.float64) - torch.tensor([0.0, 0.0, 2.5])
    g[2] = g[2] * 3  # large: many are visible although their centres leave the clamped field of view
    outs = {}
    for name in ("torch", "numba"):
        args = [a.clone().requires_grad_() for a in g]
        p = project(*args, cam, sh_degree=3) if name == "torch" else project_fused(*args, cam, 3)
        gen = torch.Generator().manual_seed(0)
        loss = sum((x * torch.randn(x.shape, generator=gen, dtype=x.dtype)).sum()
                   for x in (p.means2d, p.conics, p.depths, p.colors, p.opacities))  # fmt: skip
        loss.backward()
        outs[name] = [p.means2d, p.conics, p.depths, p.colors, p.extents] + [a.grad for a in args]
        bins = bin_tiles(p) if name == "torch" else bin_tiles_numba(p)
        outs[name] += [bins.offsets, bins.gauss]
        ids, m2 = p.ids, p.means2d.detach()
    assert torch.equal(outs["torch"][-1], outs["numba"][-1]) and torch.equal(outs["torch"][-2], outs["numba"][-2])
    for a, b in zip(outs["numba"][:-2], outs["torch"][:-2], strict=True):
        a, b = a.detach(), b.detach()
        torch.testing.assert_close(a, b, atol=1e-12 * float(b.abs().max() + 1), rtol=1e-10)
    # Centres beyond 1.15x the image (where the Jacobian's tangent is clamped) are exercised.
    clamped = (m2[:, 0] < -0.15 * 72) | (m2[:, 0] > 1.15 * 72) | (m2[:, 1] < -0.15 * 64) | (m2[:, 1] > 1.15 * 64)
    assert int(clamped.sum()) > 3 and len(ids) > 200


def test_sh_basis_matches_textbook_polynomials_and_dc_colour():
    d = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(sh_basis(3, d), sh_basis_reference(3, d))
    rgb = torch.rand(50, 3, dtype=torch.float64)
    coeffs = torch.zeros(50, 16, 3, dtype=torch.float64)
    coeffs[:, 0] = rgb_to_sh(rgb)
    torch.testing.assert_close(eval_sh(3, coeffs, d), rgb)
    # Orthonormality of the real SH basis on the sphere (Monte Carlo, 4pi normalisation).
    u = torch.nn.functional.normalize(torch.randn(200000, 3, dtype=torch.float64), dim=-1)
    b = sh_basis(3, u)
    gram = 4 * math.pi * b.T @ b / len(u)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)


def test_ply_round_trip_is_exact_and_standard(tmp_path):
    g = torch.Generator().manual_seed(0)
    m = GaussianModel(torch.randn(30, 3, generator=g), torch.randn(30, 3, generator=g),
                      torch.randn(30, 4, generator=g), torch.randn(30, generator=g), torch.randn(30, 1, 3, generator=g),
                      torch.randn(30, 15, 3, generator=g))  # fmt: skip
    path = save_ply(m, tmp_path / "point_cloud.ply")
    again = load_ply(path)
    for k, v in m.tensors().items():
        assert torch.equal(getattr(again, k).data, v), k
    head = path.read_bytes().split(b"end_header\n")[0].decode()
    props = [ln.split()[-1] for ln in head.splitlines() if ln.startswith("property")]
    assert props[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert props[9:54] == [f"f_rest_{i}" for i in range(45)] and props[54:] == [
        "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip
    # f_rest is channel-major: f_rest_0..14 are the red coefficients of bands 1..3.
    raw = np.frombuffer(path.read_bytes()[len(head) + len("end_header\n") :], dtype="<f4").reshape(30, 62)
    np.testing.assert_array_equal(raw[:, 9:24], m.sh_rest.detach()[:, :, 0].numpy())
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
    with pytest.raises(ValueError, match="binary_little_endian"):
        load_ply(tmp_path / "bad.ply")


def test_densification_clones_splits_prunes_and_keeps_adam_state_aligned():
    n = 6
    means = torch.zeros(n, 3)
    means[:, 0] = torch.arange(n).float()
    scales = torch.tensor([0.01, 0.01, 0.5, 0.5, 0.01, 0.01]).log()[:, None].repeat(1, 3)
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)
    logits = torch.tensor([2.0, 2.0, 2.0, 2.0, -8.0, 2.0])  # #4 is transparent (prune)
    m = GaussianModel(means, scales, quats, logits, torch.zeros(n, 1, 3), torch.zeros(n, 3, 3), max_sh_degree=1)
    opt = torch.optim.Adam([{"params": [getattr(m, k)], "name": k} for k in m.PARAMS], lr=1e-3)
    m.means.sum().backward()  # creates Adam state for the means
    for p in m.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    opt.step()
    opt.state[m.means]["exp_avg"][:, 0] = torch.arange(n).float()  # tag rows to follow them
    mean0 = m.means[0].detach().clone()
    strat = DefaultStrategy(DensifyConfig(grad_threshold=1.0), scene_extent=10.0)
    strat._ensure(n, "cpu")
    strat.grad_accum[:] = torch.tensor([5.0, 0.0, 5.0, 0.0, 0.0, 0.0])  # #0 clone (small), #2 split (large)
    strat.count[:] = 1
    stats = strat.refine(m, opt, prune_big=False)
    assert stats["cloned"] == 1 and stats["split"] == 1 and stats["pruned"] == 2  # the split original and #4
    assert len(m) == n + 1 + 2 - 2
    for k in m.PARAMS:
        p = getattr(m, k)
        assert opt.param_groups[m.PARAMS.index(k)]["params"][0] is p
        if p in opt.state:
            assert opt.state[p]["exp_avg"].shape == p.shape
    tags = opt.state[m.means]["exp_avg"][:, 0].tolist()
    assert tags == [0.0, 1.0, 3.0, 5.0, 0.0, 0.0, 0.0]  # survivors, then the clone, then the split children (0)
    assert torch.equal(m.means[4].detach(), mean0) and torch.allclose(m.scales[5:], torch.full((2, 3), 0.5 / 1.6))
    strat.reset_opacity(m, opt)
    assert float(m.opacities.detach().max()) <= 0.01 + 1e-6


GS_TINY = dict(representation="gaussians", steps=2, gs_num_init=300, checkpoint_every=1, gs_refine_start=0,
               gs_refine_every=1, w_silhouette=0.1)  # fmt: skip


def test_two_step_smoke_fit_run_folder_and_render(tmp_path):
    scene = tiny_scene(tmp_path)
    f = make_fitter(scene, [0, 1, 2], FitConfig(**GS_TINY), tmp_path / "run")
    state = f.run(progress=False)
    assert f.step == 2 and all(math.isfinite(h["mse"]) for h in f.history)
    out = state.render(scene.cameras[3])
    assert out["rgb"].shape == (3, 24, 24) and out["depth"].shape == (1, 24, 24) and out["opacity"].max() > 0.1
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["fit"]["representation"] == "gaussians"
    loaded, _ = load_fit(tmp_path / "run")
    torch.testing.assert_close(loaded.render(scene.cameras[3])["rgb"], out["rgb"])


def test_gaussian_fit_learns_and_resumes_to_the_same_result(tmp_path):
    scene = tiny_scene(tmp_path)
    cfg = FitConfig(**{**GS_TINY, "steps": 60, "checkpoint_every": 25, "gs_refine_start": 10, "gs_refine_every": 20})
    full_fit = make_fitter(scene, [0, 1, 2], cfg, tmp_path / "full")
    full = full_fit.run(progress=False)
    first = sum(h["mse"] for h in full_fit.history[:1])
    assert full_fit.history[-1]["mse"] < 0.5 * first  # it learns
    kill_at(make_fitter(scene, [0, 1, 2], cfg, tmp_path / "resumed"), 30)
    torch.manual_seed(999)
    resumed = make_fitter(scene, [0, 1, 2], cfg, tmp_path / "resumed").run(progress=False)
    for k, v in full.model.tensors().items():
        torch.testing.assert_close(resumed.model.tensors()[k], v, atol=1e-5, rtol=1e-5)


def test_cli_fit_gaussians_render_export_ply(tmp_path):
    from fewview.cli import main

    from .helpers import write_blender

    write_blender(tmp_path / "scene", make_cams(n=4, h=24, w=24, f=30.0), "train")
    run = tmp_path / "run"
    opts = ["--views", "0,1,2", "--representation", "gaussians", "--steps", "3", "--gs-num-init", "200"]
    assert main(["fit", str(tmp_path / "scene"), "--out", str(run), "--quiet", *opts]) == 0
    assert main(["export", str(run), "--gaussians", str(tmp_path / "g.ply")]) == 0
    assert len(load_ply(tmp_path / "g.ply")) > 0
    assert main(["render", str(run), "--frames", "3", "--quiet"]) == 0
    assert (run / "turntable.mp4").exists()
    assert main(["export", str(run)]) == 0 and len(load_ply(run / "point_cloud.ply")) > 0
    assert main(["export", str(run), "--mesh", str(tmp_path / "m.ply")]) == 2  # one line: Gaussians have no mesh


@pytest.mark.skipif(not gsplat_available(), reason="gsplat parity runs only where CUDA and gsplat exist")
def test_gsplat_matches_the_fast_path():
    cam = make_cams(n=1, h=64, w=72, f=70.0)
    g = random_gaussians(600, seed=5, dtype=torch.float32)
    g[0] = g[0] * 0.7 - torch.tensor([0.0, 0.0, 2.5])
    ref = rasterize(*g, cam, sh_degree=3, background=(1.0, 1.0, 1.0), backend="numba")
    cu = rasterize(*[a.cuda() for a in g], cam, sh_degree=3, background=(1.0, 1.0, 1.0), backend="gsplat")
    torch.testing.assert_close(cu.rgb.cpu(), ref.rgb, atol=2e-3, rtol=0)
    torch.testing.assert_close(cu.alpha.cpu(), ref.alpha, atol=2e-3, rtol=0)


def _documented_gsplat_rasterization(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=0.01, far_plane=1e10,
    radius_clip=0.0, eps2d=0.3, sh_degree=None, packed=True, tile_size=16, backgrounds=None, render_mode="RGB",
    sparse_grad=False, absgrad=False, rasterize_mode="classic", channel_chunk=32, distributed=False,
    camera_model="pinhole", segmented=False, covars=None,
):  # fmt: skip
    """A CPU stand-in for ``gsplat.rasterization`` (v1.x): the documented signature, the shape contract of its
    docstring and argument checks (``backgrounds`` is [..., C, D] with D the colour channels: in "RGB+ED" mode gsplat
    appends the depth channel's zero itself), and its documented outputs ([C, H, W, D+1] with the expected depth
    sum(w z) / alpha last, alphas [C, H, W, 1], meta radii [C, N, 2], means2d [C, N, 2]), computed with fewview's
    PyTorch reference."""
    from fewview.gaussians.rasterize import rasterize as fv_rasterize

    n, c = means.shape[0], viewmats.shape[0]
    assert means.shape == (n, 3) and quats.shape == (n, 4) and scales.shape == (n, 3), "Gaussian shapes"
    assert opacities.shape == (n,), opacities.shape
    assert viewmats.shape == (c, 4, 4) and Ks.shape == (c, 3, 3), (viewmats.shape, Ks.shape)
    assert isinstance(width, int) and isinstance(height, int)
    assert render_mode in ("RGB", "D", "ED", "RGB+D", "RGB+ED"), render_mode
    if sh_degree is None:
        assert colors.dim() == 2 and colors.shape[0] == n, colors.shape
        d = colors.shape[-1]
    else:
        assert colors.dim() == 3 and colors.shape[0] == n and colors.shape[-1] == 3, colors.shape
        assert (sh_degree + 1) ** 2 <= colors.shape[1], colors.shape
        d = 3
    if backgrounds is not None:
        assert backgrounds.shape == (c, d), f"backgrounds must be [C, D] = {(c, d)}, got {tuple(backgrounds.shape)}"
    assert not packed, "fewview reads meta['radii'] and meta['means2d'] in the unpacked [C, N, ...] layout"
    outs, alphas = [], []
    for k in range(c):
        cam = Cameras(torch.linalg.inv(viewmats[k])[None], Ks[k][None], torch.tensor([height, width]))
        bg = None if backgrounds is None else backgrounds[k]
        r = fv_rasterize(means, quats, scales, opacities, colors, cam, sh_degree, bg, backend="torch",
                         tile=tile_size, eps2d=eps2d, near=near_plane)  # fmt: skip
        ed = r.depth / r.alpha.clamp(min=1e-10)
        outs.append(torch.cat([r.rgb, ed]).permute(1, 2, 0))
        alphas.append(r.alpha.permute(1, 2, 0))
    radii = torch.zeros(c, n, 2, dtype=torch.int32)
    radii[:, r.ids] = r.radii.round().int().clamp(min=1)[:, None]
    meta = {"radii": radii, "means2d": torch.zeros(c, n, 2, requires_grad=True)}
    return torch.stack(outs), torch.stack(alphas), meta


def test_gsplat_call_follows_the_documented_contract(monkeypatch):
    """The gsplat backend's arguments checked against gsplat's documented signature and shapes on CPU, and its
    post-processing (depth un-normalised, channels split) equal to the reference backend's output."""
    import importlib
    import inspect
    import sys
    import types

    rz = importlib.import_module("fewview.gaussians.rasterize")

    fake = types.ModuleType("gsplat")
    fake.rasterization = _documented_gsplat_rasterization
    monkeypatch.setitem(sys.modules, "gsplat", fake)
    monkeypatch.setattr(rz, "gsplat_available", lambda: True)
    documented = ["means", "quats", "scales", "opacities", "colors", "viewmats", "Ks", "width", "height"]
    assert list(inspect.signature(fake.rasterization).parameters)[:9] == documented
    cam = make_cams(n=1, h=20, w=24, f=22.0)
    g = random_gaussians(120, seed=2, dtype=torch.float32)
    g[0] = g[0] * 0.7 - torch.tensor([0.0, 0.0, 2.5])
    for sh in (3, None):
        args = list(g) if sh is not None else [*g[:4], torch.rand(len(g[0]), 3)]
        ref = rz.rasterize(*args, cam, sh_degree=sh, background=(1.0, 0.5, 0.0), backend="torch")
        out = rz.rasterize(*args, cam, sh_degree=sh, background=(1.0, 0.5, 0.0), backend="gsplat")
        for name in ("rgb", "depth", "alpha"):
            torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=1e-5, rtol=0)
        assert torch.equal(out.ids, ref.ids)
