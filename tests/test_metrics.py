"""PSNR / SSIM against analytic values and a naive per-window reference."""

import numpy as np
import torch

from fewview.metrics import psnr, ssim


def test_psnr_known_mse():
    gt = torch.rand(2, 3, 16, 16)
    pred = gt + 0.1
    torch.testing.assert_close(psnr(pred, gt), torch.full((2,), 20.0))
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, :8] = 1
    pred2 = gt.clone()
    pred2[..., :8, :] += 0.01  # error only inside the mask: masked MSE 1e-4 -> 40 dB
    pred2[..., 8:, :] += 0.5
    torch.testing.assert_close(psnr(pred2, gt, mask), torch.full((2,), 40.0), atol=1e-3, rtol=0)


def naive_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Direct per-window SSIM for one (C, H, W) pair: Gaussian(11, 1.5) weights, valid windows."""
    t = np.arange(11) - 5
    g = np.exp(-(t**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                a, b = x[c, i : i + 11, j : j + 11], y[c, i : i + 11, j : j + 11]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
                cov = (w * a * b).sum() - ma * mb
                vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_identity_and_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 20, 18, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    ref = torch.tensor([naive_ssim(x[i].numpy(), y[i].numpy()) for i in range(2)], dtype=torch.float64)
    torch.testing.assert_close(ssim(x, y), ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(ssim(x, y, torch.ones(2, 1, 20, 18, dtype=torch.float64)), ref, atol=1e-10, rtol=0)
    assert float(ssim(x, 1 - x).max()) < 0.0


def test_chamfer_distance_known_answers():
    from fewview.metrics import chamfer_distance

    g = torch.Generator().manual_seed(0)
    a = torch.rand(500, 3, generator=g, dtype=torch.float64)
    assert chamfer_distance(a, a)["chamfer"] == 0.0
    # A rigid shift smaller than half the spacing of a lattice moves every nearest neighbour by the shift.
    axis = torch.arange(5, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    d = chamfer_distance(grid, grid + torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64))
    assert abs(d["accuracy"] - 0.1) < 1e-12 and abs(d["completeness"] - 0.1) < 1e-12
    # One-sided: a subset is perfectly accurate but incomplete.
    d2 = chamfer_distance(grid[:10], grid)
    assert d2["accuracy"] == 0.0 and d2["completeness"] > 0.5


def test_mesh_surface_sampling_on_sphere():
    import trimesh

    from fewview.metrics import sample_mesh_surface

    pts = sample_mesh_surface(trimesh.creation.icosphere(subdivisions=4, radius=2.0), 2000)
    assert pts.shape == (2000, 3) and abs(float(pts.norm(dim=-1).mean()) - 2.0) < 0.01


def test_frechet_distance_closed_form():
    """Gaussians with known moments: the distance is ‖Δμ‖² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^½); for diagonal covariances
    the last term is Σ (σ1 − σ2)²."""
    from fewview.metrics.frechet import frechet_distance

    g = torch.Generator().manual_seed(0)
    z = torch.randn(200000, 3, generator=g, dtype=torch.float64)
    z = (z - z.mean(0)) / z.std(0)
    a = z * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    b = z.flip(0) * torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64) + torch.tensor([1.0, 0.0, -2.0])
    want = 1 + 4 + (1 - 2) ** 2 + 0 + (0.5 - 1) ** 2
    assert abs(frechet_distance(a, b) - want) < 0.05
    assert abs(frechet_distance(a, a)) < 1e-6
    assert abs(frechet_distance(a, a + 3.0) - 27.0) < 1e-6  # a shift of 3 in each of 3 dims


def test_fd_alexnet_is_zero_for_the_same_images_and_grows_with_blur(alex_weights):
    from fewview.metrics.frechet import fd_alexnet

    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 3, 32, 32, generator=g)
    blurred = torch.nn.functional.avg_pool2d(x, 5, 1, 2)
    far = fd_alexnet(x, blurred, alex_weights)
    assert abs(fd_alexnet(x, x, alex_weights)) < 1e-5 * far  # zero up to the square root's rounding
    assert far > fd_alexnet(x, x.flip(0), alex_weights)


def test_cached_figures_scores_once_and_keeps_settings_apart(tmp_path):
    from fewview.evaluation import cached_figures, settings_folder

    calls = []

    def score(x):
        calls.append(x)
        return {"psnr": 2.0 * x}

    a = tmp_path / settings_folder("full", {"steps": 300, "ipsm_prior": "runs/p"}) / "obj.json"
    assert a.parent.name == "full@ipsm_prior=runs_p@steps=300"
    assert cached_figures(a, score, 1.5) == {"psnr": 3.0}
    assert cached_figures(a, score, 99.0) == {"psnr": 3.0}  # read back, not rescored
    b = tmp_path / settings_folder("full", {"steps": 600}) / "obj.json"
    assert cached_figures(b, score, 2.0) == {"psnr": 4.0}
    assert calls == [1.5, 2.0]
    from fewview.methods.fit_config import FitConfig

    named = settings_folder("base", {}, FitConfig(steps=10))
    assert named.startswith("base@cfg=") and named != settings_folder("base", {}, FitConfig(steps=11))


def test_mean_figures_averages_scenes_ignoring_a_missing_metric():
    from fewview.evaluation import mean_figures, mean_metrics

    per = [{"means": {"psnr": 20.0, "lpips_alex": float("nan")}, "seconds": 10.0},
           {"means": {"psnr": 24.0, "lpips_alex": 0.2}, "seconds": 30.0}]  # fmt: skip
    assert mean_metrics(per) == {"psnr": 22.0, "lpips_alex": 0.2}
    res = mean_figures(per)
    assert res["means"] == {"psnr": 22.0, "lpips_alex": 0.2}
    assert res["seconds"] == 20.0 and res["scenes"] == 2 and res["per_object"] is per


def test_mean_figures_of_scenes_scored_without_lpips_weights():
    from fewview.evaluation import mean_figures

    # the shape evaluate_views writes without LPIPS weights
    note = "no LPIPS weights found"
    per = [{"means": {"psnr": 20.0, "lpips_alex": None, "lpips_unavailable": note}, "seconds": 1.0},
           {"means": {"psnr": 22.0, "lpips_alex": None, "lpips_unavailable": note}, "seconds": 3.0}]  # fmt: skip
    assert mean_figures(per)["means"] == {"psnr": 21.0, "lpips_alex": None, "lpips_unavailable": note}
    # a metric only some scenes have is the mean of those
    per[1]["means"]["lpips_alex"] = 0.3
    assert mean_figures(per)["means"]["lpips_alex"] == 0.3


def test_mean_figures_pools_angle_bins_over_views():
    from fewview.evaluation import mean_figures

    per = [{"means": {"psnr": 20.0}, "seconds": 1.0, "binned": {"0-15": {"count": 1, "psnr": 30.0},
                                                                "45+": {"count": 3, "psnr": 10.0}}},
           {"means": {"psnr": 22.0}, "seconds": 1.0, "binned": {"45+": {"count": 1, "psnr": 14.0}}}]  # fmt: skip
    binned = mean_figures(per)["binned"]
    assert binned["0-15"] == {"count": 1, "psnr": 30.0}
    assert binned["45+"] == {"count": 4, "psnr": 11.0}  # (3·10 + 14) / 4
    assert list(binned) == ["0-15", "45+"] and mean_figures([{"means": {"psnr": 1.0}, "seconds": 0.0}])["binned"] == {}
