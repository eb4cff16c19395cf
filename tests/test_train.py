"""Training infrastructure: sampling independent of the process count, DDP parity under torchrun,
resume after a kill, EMA/schedule maths, save_pretrained round trips; pixelNeRF's projections."""

import math

import pytest
import torch

from fewview.cameras import Cameras
from fewview.cli import main
from fewview.models import PixelNeRF, PixelNeRFConfig
from fewview.models.pixelnerf import sample_features
from fewview.objects.builder import ObjectsConfig, build
from fewview.train import (
    EMA,
    CO3DSource,
    DistInfo,
    ObjectsSource,
    TrainConfig,
    Trainer,
    from_pretrained,
    lr_lambda,
    sample_batch,
    save_pretrained,
)

from .helpers import ddp_weight_gap, kill_at, make_cams, write_co3d

TINY_MODEL = PixelNeRFConfig(widths=(8, 8), hidden=16, blocks_before_mean=1, blocks_after_mean=1, samples_coarse=6,
                             samples_fine=3)  # fmt: skip


@pytest.fixture(scope="module")
def objects_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects")
    build(ObjectsConfig(objects=10, views=6, res=24, shard_size=4), root, progress=False)
    return root


def train_cfg(root, **kw):
    base = dict(data=str(root), steps=4, batch_size=2, rays=32, checkpoint_every=2, eval_every=0, warmup=1,
                context_min=2, context_max=3, device="cpu")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_batches_do_not_depend_on_the_number_of_processes(objects_root):
    src = ObjectsSource(objects_root, "train")
    whole = sample_batch(src, 3, 7, 4, (2, 4), 16, 6)
    parts = [sample_batch(src, 3, 7, 4, (2, 4), 16, 6, rank=r, world=2) for r in range(2)]
    for name in ("context", "context_c2w", "query", "rays", "noise"):
        torch.testing.assert_close(torch.cat([getattr(p, name) for p in parts]), getattr(whole, name), rtol=0, atol=0)
    assert whole.scene == parts[0].scene + parts[1].scene
    again = sample_batch(src, 3, 7, 4, (2, 4), 16, 6)
    assert torch.equal(again.context, whole.context) and not torch.equal(sample_batch(src, 3, 8, 4, (2, 4), 16,
                                                                                       6).rays, whole.rays)  # fmt: skip
    # Query views are never among the context views of the same scene.
    assert not any(torch.equal(whole.query[b], c) for b in range(4) for c in whole.context[b])


def test_co3d_source_feeds_the_same_sampler(tmp_path):
    write_co3d(tmp_path, make_cams(n=5, h=40, w=48))
    src = CO3DSource(tmp_path, ["hydrant"], subset="fewview_dev", split="test", res=24)
    b = sample_batch(src, 0, 0, 2, (2, 3), 8, 4)
    assert b.context.shape[-2:] == (24, 24) and b.query_c2w.shape == (2, 4, 4) and torch.isfinite(b.context).all()


def test_query_rays_avoid_the_padding_of_co3d_crops(tmp_path):
    """Supervised query rays are drawn among the photo's pixels: a padded crop's padding holds no photo (an object
    cut by the image border continues there), so no ray lands in it."""
    from fewview.train.data import ray_pixels

    write_co3d(tmp_path, make_cams(n=5, h=40, w=64, f=120.0))  # a sphere taller than the image: padded crops
    src = CO3DSource(tmp_path, ["hydrant"], subset="fewview_dev", split="test", res=24)
    b = sample_batch(src, 0, 0, 2, (2, 3), 40, 4)
    valid = b.query_valid.flatten(1)
    assert float(valid.mean()) < 1  # the fixture pads
    assert bool((torch.gather(valid, 1, b.rays) == 1).all())
    assert all(len(set(r.tolist())) == 40 for r in b.rays)  # distinct while there are enough valid pixels
    few = torch.zeros(1, 4, 6)
    few[0, 1, 2:5] = 1
    idx = ray_pixels(24, 10, torch.Generator().manual_seed(0), few)
    assert len(idx) == 10 and set(idx.tolist()) <= {8, 9, 10}  # fewer valid pixels than rays: repeats
    with pytest.raises(ValueError, match="no valid pixel"):
        ray_pixels(24, 10, torch.Generator().manual_seed(0), torch.zeros(1, 4, 6))
    whole = ray_pixels(24, 10, torch.Generator().manual_seed(3), torch.ones(1, 4, 6))  # no padding: as before
    assert torch.equal(whole, torch.randperm(24, generator=torch.Generator().manual_seed(3))[:10])


def test_sample_features_reads_pixel_centres_exactly():
    img = torch.rand(1, 3, 6, 8)
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(8.0), indexing="ij")
    uv = torch.stack([xs + 0.5, ys + 0.5], -1).reshape(1, -1, 2)
    f = sample_features(img, uv, (6, 8))
    torch.testing.assert_close(f, img.flatten(2).transpose(1, 2))


def test_pixelnerf_points_project_to_their_pixels():
    """A point on a context view's pixel ray fetches that pixel's feature (identity encoder)."""
    cams = make_cams(n=2, h=12, w=16)
    model = PixelNeRF(TINY_MODEL)
    img = torch.rand(1, 2, 3, 12, 16)
    uv = torch.tensor([[[3.5, 4.5], [10.5, 7.5]]], dtype=torch.float64)
    pts = cams[0].unproject(uv, torch.tensor([[2.5, 3.1]], dtype=torch.float64))
    w2c = torch.linalg.inv(cams.c2w.float())
    xc = pts.float()[0] @ w2c[0, :3, :3].T + w2c[0, :3, 3]
    p = (xc / xc[:, 2:]) @ cams.K[0].float().T
    f = sample_features(img[0, :1], p[None, :, :2], (12, 16))
    torch.testing.assert_close(f[0], img[0, 0][:, [4, 7], [3, 10]].T, atol=1e-5, rtol=0)
    assert model.encode(img).shape == (1, 2, 16, 6, 8)


def test_schedule_and_ema():
    cfg = TrainConfig(steps=100, warmup=10, final_lr_ratio=0.1)
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(100) == pytest.approx(0.1) and f(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    lin = torch.nn.Linear(2, 1)
    ema = EMA(lin, decay=0.9)
    w0 = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)  # warm-up: the first update uses decay 1/10
    torch.testing.assert_close(ema.model.weight, w0 + 0.9)
    ema.updates = 1000
    ema.update(lin)  # then the configured 0.9
    torch.testing.assert_close(ema.model.weight, w0 + 0.9 + 0.1 * 0.1)


def test_smoke_training_writes_checkpoint_eval_images_and_pretrained(objects_root, tmp_path):
    torch.manual_seed(0)
    model = PixelNeRF(TINY_MODEL)
    cfg = train_cfg(objects_root, eval_every=2)
    ema = Trainer(model, cfg, ObjectsSource(objects_root, "train"), tmp_path / "run", DistInfo()).run(progress=False)
    assert (tmp_path / "run" / "eval" / "step_000004.png").exists()
    again = from_pretrained(tmp_path / "run" / "pretrained")
    for k, v in ema.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)
    save_pretrained(again, tmp_path / "copy")
    assert from_pretrained(tmp_path / "copy").config == again.config
    with pytest.raises(FileNotFoundError, match="pretrained model folder"):
        from_pretrained(tmp_path)


def test_resume_after_a_kill_continues_to_the_same_result(objects_root, tmp_path):
    src = ObjectsSource(objects_root, "train")
    cfg = train_cfg(objects_root, steps=6, checkpoint_every=2)
    torch.manual_seed(0)
    full = Trainer(PixelNeRF(TINY_MODEL), cfg, src, tmp_path / "full", DistInfo()).run(progress=False)
    torch.manual_seed(0)
    kill_at(Trainer(PixelNeRF(TINY_MODEL), cfg, src, tmp_path / "resumed", DistInfo()), 3)  # checkpoint at step 2
    torch.manual_seed(123)  # a new process: different initial weights, restored from the checkpoint
    tr = Trainer(PixelNeRF(TINY_MODEL), cfg, src, tmp_path / "resumed", DistInfo())
    resumed = tr.run(progress=False)
    assert tr.step == 6
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, atol=1e-6, rtol=0)


MODEL_ARGS = {
    "pixelnerf": ["--model-widths", "8", "8", "--model-hidden", "16", "--model-samples-coarse", "6",
                  "--model-samples-fine", "3"],
    "eft": ["--model-widths", "8", "8", "--model-width", "16", "--model-ffn", "16", "--model-layers", "1",
            "--model-points", "5"],
}  # fmt: skip


@pytest.mark.parametrize("model", sorted(MODEL_ARGS))
def test_ddp_two_processes_match_one_process(objects_root, tmp_path, model):
    args = ["train", model, "--data", str(objects_root), "--steps", "3", "--batch-size", "4", "--rays", "32",
            "--checkpoint-every", "3", "--eval-every", "0", "--device", "cpu", "--quiet"]  # fmt: skip
    args += MODEL_ARGS[model]
    assert ddp_weight_gap(args, tmp_path) < 1e-5
    import json

    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2


def test_eft_trains_renders_any_resolution_and_features(objects_root, tmp_path):
    from fewview.models import EFT, EFTConfig

    cfg = EFTConfig(widths=(8, 8), width=16, ffn=16, layers=1, points=5, feature_dim=6)
    torch.manual_seed(0)
    src = ObjectsSource(objects_root, "train")
    ema = Trainer(EFT(cfg), train_cfg(objects_root), src, tmp_path / "eft", DistInfo()).run(progress=False)
    imgs, _, cams = src.views(0, [0, 1])
    target = src.views(0, [3])[2]
    small = ema.render(imgs, cams, target.resize(8, 10))
    assert small["rgb"].shape == (3, 8, 10) and small["features"].shape == (6, 8, 10)
    assert float(small["rgb"].min()) >= 0 and float(small["rgb"].max()) <= 1
    # Rays are independent: a pixel's value does not depend on which other pixels render with it.
    big = ema.render(imgs, cams, target, chunk=7)
    torch.testing.assert_close(big["rgb"], ema.render(imgs, cams, target, chunk=4096)["rgb"], atol=1e-5, rtol=0)


def test_cli_train_and_recon_on_a_protocol(objects_root, tmp_path):
    from .helpers import write_blender

    args = ["--data", str(objects_root), "--steps", "2", "--batch-size", "2", "--rays", "16", "--eval-every", "0",
            "--quiet", "--model-widths", "8", "--model-hidden", "8", "--model-samples-coarse", "4",
            "--model-samples-fine", "2"]  # fmt: skip
    assert main(["train", "pixelnerf", "--out", str(tmp_path / "pn"), *args]) == 0
    write_blender(tmp_path / "scene", make_cams(n=6, h=24, w=24, f=30.0), "train")
    model = str(tmp_path / "pn" / "pretrained")
    out = tmp_path / "rec"
    assert main(["recon", str(tmp_path / "scene"), "--method", "pixelnerf", "--model", model, "--views", "0,2",
                 "--out", str(out), "--frames", "3", "--quiet"]) == 0  # fmt: skip
    assert len(list((out / "views").glob("*_rgb.png"))) == 4 and (out / "turntable.mp4").exists()
    assert main(["recon", str(tmp_path / "scene"), "--method", "eft", "--model", model, "--views", "0", "--out",
                 str(out)]) == 2  # fmt: skip


def test_resolve_model_dir_prefers_real_folders_then_shipped_names(tmp_path, monkeypatch):
    from fewview.pretrained import resolve_model_dir, shipped_model_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "eft").mkdir()
    (tmp_path / "eft" / "config.json").write_text("{}")  # a run folder, not a pretrained one
    assert resolve_model_dir("eft") == shipped_model_dir("eft")
    folder = save_pretrained(PixelNeRF(TINY_MODEL), tmp_path / "mine")
    assert resolve_model_dir(folder) == folder
    with pytest.raises(FileNotFoundError, match="neither"):
        resolve_model_dir("no-such-model")


def test_eft_projects_each_depth_sample_where_the_cameras_do():
    """Every depth sample of a query ray lands, in each context view, at ``Cameras.project`` of that world point,
    and the samples lie on the query ray between the band's near and far depths."""
    from fewview.cameras import look_at
    from fewview.models import EFT, EFTConfig

    torch.manual_seed(0)
    eye = torch.tensor([[3.0, 0.2, 0.5], [0.1, 2.8, 0.9], [-2.6, -0.9, 1.2], [1.5, -2.5, -0.4]])
    c2w = look_at(eye, torch.zeros(4, 3), torch.tensor([0.0, 0.0, 1.0])).float()
    K = torch.tensor([[[40.0, 0, 24], [0, 42.0, 20], [0, 0, 1]]]).expand(4, 3, 3)
    ctx, q = [0, 1, 2], 3
    model = EFT(EFTConfig(points=7, band=0.4))
    dirs = torch.nn.functional.normalize(torch.randn(1, 5, 3) * 0.2 + torch.tensor([0.0, 0, 1]), dim=-1)
    noise = torch.rand(1, 5, 7)
    s = model.epipolar_samples(c2w[None, ctx], K[None, ctx], c2w[None, q], dirs, noise)
    world = s["x"][0].reshape(-1, 3) @ c2w[q, :3, :3].T + c2w[q, :3, 3]
    uv, z = Cameras(c2w[ctx], K[ctx], torch.tensor([40, 48])).project(world)
    assert bool((z > 0).all())
    torch.testing.assert_close(s["uv"][0].reshape(3, -1, 2), uv, atol=1e-3, rtol=1e-5)
    # on the query ray: distance from the query centre = t, inside [d (1 - band), d (1 + band)]
    d = (c2w[ctx, :3, 3].norm(dim=-1)).mean()
    t = (world - c2w[q, :3, 3]).norm(dim=-1)
    assert float(t.min()) >= float(d * 0.6) - 1e-4 and float(t.max()) <= float(d * 1.4) + 1e-4
    torch.testing.assert_close(torch.nn.functional.normalize(world - c2w[q, :3, 3], dim=-1),
                               (dirs[0, :, None] @ c2w[q, :3, :3].T).expand(5, 7, 3).reshape(-1, 3))  # fmt: skip


def test_the_trainer_imports_no_model_and_models_load_by_name():
    """Layering: fewview.train and fewview.pretrained import no model package; a model's module is imported on
    first use through the fewview.models entry points."""
    import subprocess
    import sys

    code = (
        "import sys, fewview.train, fewview.pretrained as p\n"
        "assert not [m for m in sys.modules if m.startswith(('fewview.models', 'fewview.diffusion'))], sys.modules\n"
        "m = p.from_pretrained(p.shipped_model_dir('eft'))\n"
        "assert m.model_name == 'eft' and 'fewview.models.eft' in sys.modules\n"
        "assert 'fewview.diffusion' not in sys.modules\n"
        "assert {'pixelnerf', 'eft', 'vae', 'ldm', 'inpaint'} <= set(p.available_models())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
