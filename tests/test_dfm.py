"""DFM: the denoiser's clean estimate is a render of its 3-D scene; losses through the renderer; sampling, the
sampled scene, autoregressive sampling, uncertainty, recon, DDP parity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fewview.cameras import Cameras, camera_rays
from fewview.models.dfm import DFM, DFMConfig, autoregressive, dense_distortion, edge_aware_smoothness, pixel_variance
from fewview.objects.builder import ObjectsConfig, build, load_object
from fewview.train import DistInfo, ObjectsSource, TrainConfig, Trainer

from .helpers import ddp_weight_gap

EXAMPLE = Path(__file__).resolve().parents[1] / "fewview" / "assets" / "example_object"
TINY = dict(widths=(8, 8), hidden=16, features=4, time_dim=16, pn_init="", samples_coarse=6, samples_fine=2,
            estimate_samples=6, patch=8, lpips_size=32, sample_steps=3, w_lpips=0.0)  # fmt: skip
TINY_ARGS = ["--model-widths", "8", "8", "--model-hidden", "16", "--model-features", "4", "--model-time-dim", "16",
             "--model-pn-init", "", "--model-samples-coarse", "6", "--model-samples-fine", "2",
             "--model-estimate-samples", "6", "--model-patch", "8", "--model-sample-steps", "3",
             "--model-w-lpips", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def objects_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects32")
    build(ObjectsConfig(objects=8, views=6, res=32, shard_size=4), root, progress=False)
    return root


@pytest.fixture(scope="module")
def tiny_dfm(objects_root, tmp_path_factory):
    """A tiny DFM trained for a few steps and saved: (model folder, model)."""
    torch.manual_seed(0)
    model = DFM(DFMConfig(**TINY))
    out = tmp_path_factory.mktemp("dfm")
    cfg = TrainConfig(data=str(objects_root), steps=3, batch_size=2, rays=8, checkpoint_every=3, eval_every=3,
                      warmup=1, context_min=2, context_max=3, device="cpu", lr=1e-3)  # fmt: skip
    Trainer(model, cfg, ObjectsSource(objects_root, "train"), out, DistInfo()).run(progress=False)
    assert (out / "eval" / "step_000003.png").is_file()  # eval_grid samples
    return out / "pretrained", model.eval()


def _inputs(objects_root):
    sc = load_object(objects_root, 0)
    return sc, sc.composite((1.0, 1.0, 1.0)).float(), sc.cameras.to(torch.float32)


def test_clean_estimate_is_the_render_of_the_denoisers_scene(objects_root):
    """x̂0 at the target camera is the joint field's volume render there (2·rgb − 1), and its gradient reaches
    the field's MLP: no 2-D head produces it."""
    torch.manual_seed(0)
    m = DFM(DFMConfig(**TINY))
    sc, img, cams = _inputs(objects_root)
    hw = tuple(img.shape[-2:])
    ctx, c2w, K = img[None, :1], cams.c2w[None, :1], cams.K[None, :1]
    q_c2w, q_K = cams.c2w[2:3], cams.K[2:3]
    x_t = torch.randn(1, 3, *hw)
    t = torch.tensor([500])
    f = m.context.encode(ctx)
    est = m.estimate(f, c2w, K, q_c2w, q_K, hw)
    x0 = m.predict_x0(f, est, c2w, K, x_t, t, q_c2w, q_K)
    scene = m.scene(f, c2w, K, est, x_t, t, q_c2w, q_K)
    rays = camera_rays(Cameras(q_c2w, q_K, torch.tensor(hw)))
    out = m.joint.render_rays(scene["feats"], scene["c2w"], scene["K"], hw, rays.origins.reshape(1, -1, 3),
                              rays.directions.reshape(1, -1, 3), None, scene["temb"])  # fmt: skip
    assert torch.allclose(x0, out["rgb"].reshape(1, *hw, 3).permute(0, 3, 1, 2) * 2 - 1, atol=1e-6)
    x0.sum().backward()
    assert m.joint.out.weight.grad.abs().sum() > 0 and m.joint.inp.weight.grad.abs().sum() > 0
    # the noisy target enters through the target encoder: another x_t gives another estimate
    assert (m.predict_x0(f, est, c2w, K, torch.randn(1, 3, *hw), t, q_c2w, q_K) - x0).abs().max() > 0


@pytest.mark.parametrize("term", ["w_target", "w_novel"])
def test_target_and_novel_losses_reach_the_field_through_the_renderer(objects_root, term):
    from fewview.train.data import sample_batch

    torch.manual_seed(0)
    weights = {k: 0.0 for k in ("w_target", "w_novel", "w_cond", "w_lpips", "w_smooth", "w_distortion")}
    m = DFM(DFMConfig(**{**TINY, **weights, term: 1.0, "cond_drop": 0.0}))
    src = ObjectsSource(objects_root, "train")
    batch = sample_batch(src, 0, 0, 2, (2, 2), 8, m.config.samples_coarse)
    loss, logs = m(batch)
    assert loss > 0 and {"target", "novel", "cond"} <= set(logs)
    loss.backward()
    assert m.joint.out.weight.grad.abs().sum() > 0  # the rendered colour's MLP
    assert m.joint.encoder.stem[0].weight.grad.abs().sum() > 0  # the target view's features


def test_regularisers():
    """Edge-aware smoothness is 0 on flat depth and lower across an image edge; the distortion of a single-sample
    ray is w²δ/3."""
    flat = torch.ones(1, 1, 6, 6)
    img = torch.rand(1, 3, 6, 6)
    assert float(edge_aware_smoothness(flat, img)) == 0.0
    step = torch.ones(1, 1, 6, 6)
    step[..., 3:] = 2.0
    edge = torch.zeros(1, 3, 6, 6)
    edge[..., 3:] = 1.0
    assert float(edge_aware_smoothness(step, edge)) < float(edge_aware_smoothness(step, torch.zeros(1, 3, 6, 6)))
    w = torch.tensor([[[0.0, 1.0, 0.0]]])
    t = torch.tensor([[[1.0, 2.0, 3.0]]])
    assert abs(float(dense_distortion(w, t)) - 1.0 / 3.0) < 1e-6


def test_sampling_returns_scenes_that_render_any_camera(tiny_dfm, objects_root):
    _, m = tiny_dfm
    sc, img, cams = _inputs(objects_root)
    g = torch.Generator().manual_seed(0)
    scenes = m.sample(img[:1], cams[:1], cams[3:4], n=2, generator=g)
    assert len(scenes) == 2 and scenes[0].image.shape == img[0].shape
    assert (scenes[0].image - scenes[1].image).abs().max() > 0  # independent noise
    r = scenes[0].render(cams[4:5].resize(16, 16))
    assert r["rgb"].shape == (3, 16, 16) and r["opacity"].shape == (1, 16, 16)
    mean, var = pixel_variance(scenes, cams[4:5])
    assert mean.shape == (3, 32, 32) and var.shape == (1, 32, 32) and float(var.min()) >= 0
    sigma, aux = scenes[0].density(torch.zeros(5, 3))
    assert sigma.shape == (5,) and scenes[0].color(aux, torch.ones(5, 3) / 3**0.5).shape == (5, 3)
    last = autoregressive(m, img[:1], cams[:1], cams[2:4])
    assert len(last.context) == 2  # the input plus the first sampled view; the second is the scene's target


def test_same_seed_same_scene(tiny_dfm, objects_root):
    _, m = tiny_dfm
    _, img, cams = _inputs(objects_root)
    a = m.sample(img[:1], cams[:1], cams[3:4], generator=torch.Generator().manual_seed(5))[0].image
    b = m.sample(img[:1], cams[:1], cams[3:4], generator=torch.Generator().manual_seed(5))[0].image
    assert torch.equal(a, b)


def test_recon_dfm_writes_views_uncertainty_turntable(tiny_dfm, tmp_path):
    from fewview.cli import main

    folder, _ = tiny_dfm
    out = tmp_path / "dfm"
    rc = main(["recon", str(EXAMPLE), "--method", "dfm", "--model", str(folder), "--views", "0", "--samples", "2",
               "--sample-steps", "2", "--frames", "2", "--split", "test", "--out", str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    assert len(list((out / "views").glob("*_rgb.png"))) == 8 and len(list((out / "views").glob("*_std.png"))) == 8
    assert len(list((out / "samples").glob("*.png"))) == 2
    assert (out / "turntable.mp4").is_file() and (out / "turntable_std.gif").is_file()
    rc = main(["recon", str(EXAMPLE), "--method", "dfm", "--model", str(folder), "--views", "0,99",
               "--split", "test", "--out", str(tmp_path / "bad"), "--quiet"])  # fmt: skip
    assert rc == 2
    prot = tmp_path / "protocol"
    rc = main(["recon", str(EXAMPLE), "--method", "dfm", "--model", str(folder), "--protocol", "blender-split-2view",
               "--sample-steps", "2", "--out", str(prot), "--quiet"])  # fmt: skip
    import json

    rec = json.loads((prot / "metrics.json").read_text())
    assert rc == 0 and rec["method"] == "dfm-oneshot" and len(rec["evaluation_views"]) == 9


def test_ddp_two_processes_match_one_process(objects_root, tmp_path):
    args = ["train", "dfm", "--data", str(objects_root), "--steps", "2", "--batch-size", "2", "--rays", "8",
            "--context-min", "2", "--context-max", "3", "--eval-every", "0", "--checkpoint-every", "2",
            *TINY_ARGS]  # fmt: skip
    assert ddp_weight_gap(args, tmp_path) < 1e-5
