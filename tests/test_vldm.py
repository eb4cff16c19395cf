"""SparseFusion's VLDM: joint EFT + latent diffusion training, DDP parity, sampling."""

from __future__ import annotations

import time

import pytest
import torch

from fewview.models.vldm import VLDM, VLDMConfig
from fewview.objects.builder import ObjectsConfig, build
from fewview.train import DistInfo, ObjectsSource, TrainConfig, Trainer

from .helpers import ddp_weight_gap, kill_at

TINY = dict(block_out_channels=(16, 32, 32), norm_num_groups=8, attention_head_dim=8, eft_init="", eft_widths=(8, 8),
            eft_width=16, eft_ffn=16, eft_layers=1, eft_points=5, eft_feature_dim=6, repeat=3)  # fmt: skip
TINY_ARGS = ["--model-block-out-channels", "16", "32", "32", "--model-norm-num-groups", "8",
             "--model-attention-head-dim", "8", "--model-eft-init", "", "--model-eft-widths", "8", "8",
             "--model-eft-width", "16", "--model-eft-ffn", "16", "--model-eft-layers", "1", "--model-eft-points", "5",
             "--model-eft-feature-dim", "6", "--model-repeat", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def objects_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects32")
    build(ObjectsConfig(objects=8, views=6, res=32, shard_size=4), root, progress=False)
    return root


def test_joint_training_trains_the_eft_feature_head(objects_root, tmp_path):
    """The EFT's colour loss never reaches its feature head; the diffusion loss does, through the condition."""
    torch.manual_seed(0)
    model = VLDM(VLDMConfig(**TINY))
    assert model.schedule.ddpm.config.beta_schedule == "squaredcos_cap_v2"
    head = model.eft.feature_head.weight.detach().clone()
    rgb_head = model.eft.rgb_head.weight.detach().clone()
    cfg = TrainConfig(data=str(objects_root), steps=3, batch_size=2, rays=8, checkpoint_every=3, eval_every=0,
                      warmup=1, context_min=2, context_max=3, device="cpu", lr=1e-3)  # fmt: skip
    tr = Trainer(model, cfg, ObjectsSource(objects_root, "train"), tmp_path / "vldm", DistInfo())
    tr.run(progress=False)
    assert (model.eft.feature_head.weight - head).abs().max() > 1e-4
    assert (model.eft.rgb_head.weight - rgb_head).abs().max() > 1e-4
    logs = tr.history[-1]
    assert logs["diffusion"] > 0 and logs["eft_huber"] > 0
    # the diffusion loss alone moves the feature head: its gradient is not zero
    model.zero_grad()
    from fewview.train.data import sample_batch

    batch = sample_batch(ObjectsSource(objects_root, "train"), 0, 0, 2, (2, 2), 8, 5)
    hw = tuple(batch.query.shape[-2:])
    feats, _ = model.eft_grid(batch.context, batch.context_c2w, batch.context_K, batch.query_c2w, batch.query_K,
                              model.latent_grid_size(hw), hw)  # fmt: skip
    z0 = model.vae.encode(batch.query)
    model.diffusion_loss(z0, {"concat": feats}, batch.item_generators()).backward()
    assert model.eft.feature_head.weight.grad.abs().sum() > 0


def test_vldm_samples_a_view(objects_root):
    torch.manual_seed(0)
    model = VLDM(VLDMConfig(**TINY)).eval()
    src = ObjectsSource(objects_root, "train")
    imgs, _, cams = src.views(0, [0, 1])
    target = src.views(0, [3])[2]
    out = model.sample(imgs, cams, target, n=2, steps=3, guidance=2.0, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 3, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert (out[0] - out[1]).abs().max() > 0  # two samples differ


def test_ddp_two_processes_match_one_process(objects_root, tmp_path):
    args = ["train", "vldm", "--data", str(objects_root), "--steps", "2", "--batch-size", "4", "--rays", "8",
            "--context-min", "2", "--context-max", "3", "--checkpoint-every", "2", "--eval-every", "0", "--device",
            "cpu", "--quiet", *TINY_ARGS]  # fmt: skip
    assert ddp_weight_gap(args, tmp_path) < 1e-5


def test_multistep_loss_weight_and_target(objects_root):
    """SparseFusion's distillation term: its target x̂0 is the decoded multi-step denoise of the encoded render on
    the VLDM's cosine schedule, and its weight is 1 − ᾱ_t of that schedule at the drawn t."""
    from fewview.diffusion.schedule import cosine_alpha_bar
    from fewview.guidance import multistep_terms

    torch.manual_seed(0)
    model = VLDM(VLDMConfig(**TINY)).eval()
    src = ObjectsSource(objects_root, "train")
    imgs, _, cams = src.views(0, [0, 1])
    target = src.views(0, [3])[2]
    cond, _ = model.condition(imgs, cams, target)
    render = src.views(0, [3])[0].clone().requires_grad_(True)
    t = 0.3
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    terms = multistep_terms(model, render, cond, t, noise=noise)
    with torch.no_grad():
        z0, info = model.multistep_denoise(model.vae.encode(render), t, cond, noise=noise)
        x0 = model.vae.decode(z0).clamp(0, 1)
    w = 1 - float(cosine_alpha_bar(t) / cosine_alpha_bar(0.0))
    assert abs(info["alpha_bar"] - (1 - w)) < 1e-6 and info["steps"] == 30
    torch.testing.assert_close(terms["multistep_l1"], w * (render - x0).abs().mean())
    terms["multistep_l1"].backward()
    torch.testing.assert_close(render.grad, w * torch.sign(render - x0) / render.numel())
    # classifier-free guidance reaches the denoiser
    guided = multistep_terms(model, render, cond, t, noise=noise, guidance=3.0)
    with torch.no_grad():
        z3, _ = model.multistep_denoise(model.vae.encode(render), t, cond, guidance=3.0, noise=noise)
        x3 = model.vae.decode(z3).clamp(0, 1)
    assert (x3 - x0).abs().max() > 1e-4
    torch.testing.assert_close(guided["multistep_l1"], w * (render - x3).abs().mean())


def spy_denoiser(model) -> dict:
    """Keep the last UNet output of ``model`` (with its gradient retained) and its timesteps."""
    seen: dict = {}
    inner = model.denoise

    def denoise(x_t, t, **cond):
        out = inner(x_t, t, **cond)
        out.retain_grad()
        seen.update(out=out, t=t.detach().clone(), x_t=x_t.detach())
        return out

    model.denoise = denoise
    return seen


def test_diffusion_loss_mask_and_p2_weight():
    """The masked loss is the squared ε error inside the mask averaged over all elements (imagen-pytorch's
    ``loss_mask``) and sends no gradient outside it; P2 weights each draw by (1 + SNR_t)^-gamma with ᾱ from the
    cosine schedule's closed form; an all-ones mask at gamma 0 is the plain MSE."""
    from fewview.diffusion.schedule import cosine_alpha_bar

    torch.manual_seed(0)
    model = VLDM(VLDMConfig(**TINY, p2_gamma=0.0))
    seen = spy_denoiser(model)
    z0, cond = torch.randn(3, 4, 8, 8), {"concat": torch.randn(3, 6, 8, 8)}
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 5, 6)]  # noqa: E731

    def eps_error() -> torch.Tensor:  # the true ε from x_t and z0 at the drawn t, against the output
        t, x_t = seen["t"], seen["x_t"]
        a = (cosine_alpha_bar((t.double() + 1) / 1000) / cosine_alpha_bar(0.0)).float().reshape(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * z0) / (1 - a).sqrt()
        return (seen["out"].detach() - eps) ** 2, a.reshape(-1)

    plain = model.diffusion_loss(z0, cond, gens())
    torch.testing.assert_close(model.diffusion_loss(z0, cond, gens(), torch.ones(3, 1, 8, 8)), plain)
    err, a = eps_error()
    torch.testing.assert_close(plain, err.mean(), rtol=1e-4, atol=1e-6)

    mask = (torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(4)) > 0.4).float()
    masked = model.diffusion_loss(z0, cond, gens(), mask)
    torch.testing.assert_close(masked, (err * mask).mean(), rtol=1e-4, atol=1e-6)
    masked.backward()
    grad = seen["out"].grad
    assert float((grad * (1 - mask)).abs().max()) == 0.0 and float((grad * mask).abs().min()) >= 0
    assert float((grad * mask).abs().sum()) > 0

    model.config.p2_gamma = 0.5
    weighted = model.diffusion_loss(z0, cond, gens())
    w = (1 + a / (1 - a)) ** -0.5
    assert float(w.min()) < 0.5 < float(w.max())  # draws at low and high noise: the weight matters
    torch.testing.assert_close(weighted, (w * err.mean((1, 2, 3))).mean(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="loss mask"):
        model.diffusion_loss(z0, cond, gens(), torch.ones(3, 1, 4, 4))


def test_latent_valid_mask_keeps_cells_over_the_threshold():
    from fewview.models.vldm import latent_valid_mask

    valid = torch.zeros(1, 1, 8, 8)
    valid[..., :4, :4] = 1  # cell (0, 0): all valid
    valid[..., :3, 4:] = 1  # cell (0, 1): 12 of 16
    valid[..., 4:6, :4] = 1  # cell (1, 0): 8 of 16
    valid[..., 4:7, 4:7] = 1  # cell (1, 1): 9 of 16 (0.5625)
    m = latent_valid_mask(valid, (2, 2), 0.6)
    assert m.tolist() == [[[[1.0, 1.0], [0.0, 0.0]]]]


def test_vldm_loss_skips_the_padding_of_co3d_crops(tmp_path):
    """CO3D's box crops pad non-square boxes; the batch carries the valid region, and neither the VLDM's diffusion
    loss (the official mask, > 0.6 valid per cell) nor the EFT's colour loss sends gradient to the padding's cells."""
    from fewview.models.vldm import latent_valid_mask
    from fewview.train.data import CO3DSource, sample_batch

    from .helpers import make_cams, write_co3d

    write_co3d(tmp_path, make_cams(n=5, h=40, w=64, f=120.0))  # a sphere taller than the image: padded crops
    src = CO3DSource(tmp_path, ["hydrant"], subset="fewview_dev", split="test", res=32)
    batch = sample_batch(src, 0, 0, 2, (2, 2), 8, 5)
    assert batch.query_valid.shape == (2, 1, 32, 32) and batch.to("cpu").query_valid is not None
    cells = latent_valid_mask(batch.query_valid, (8, 8))
    assert 0 < float(cells.mean()) < 1  # padding at the latent grid, and photo
    torch.manual_seed(0)
    model = VLDM(VLDMConfig(**TINY))
    seen = spy_denoiser(model)
    eft_grid, rgbs = model.eft_grid, []

    def keep_rgb(*args):
        feats, rgb = eft_grid(*args)
        rgb.retain_grad()
        rgbs.append(rgb)
        return feats, rgb

    model.eft_grid = keep_rgb
    loss, logs = model(batch)
    loss.backward()
    grad = seen["out"].grad.reshape(2, TINY["repeat"], 4, 8, 8)
    outside = (1 - cells)[:, None]
    assert float((grad * outside).abs().max()) == 0.0 and float(grad.abs().sum()) > 0
    rgb_grad = rgbs[0].grad  # the EFT's colour loss: masked the same way
    assert float((rgb_grad * (1 - cells)).abs().max()) == 0.0 and float(rgb_grad.abs().sum()) > 0
    assert logs["diffusion"] > 0 and logs["eft_huber"] > 0


# ------------------------------------------------------------------ distillation
@pytest.fixture(scope="module")
def tiny_vldm(tmp_path_factory):
    from fewview.pretrained import save_pretrained

    torch.manual_seed(0)
    return save_pretrained(VLDM(VLDMConfig(**TINY)), tmp_path_factory.mktemp("vldm") / "vldm")


EXAMPLE = __import__("pathlib").Path(__file__).resolve().parents[1] / "fewview" / "assets" / "example_object"


def sf_config(model, **kw):
    from fewview.methods.sparsefusion import SparseFusionConfig

    base = dict(sf_model=str(model), steps=6, upsample_step=3, sf_bootstrap=0.5, sf_path_cameras=6, batch_rays=256,
                checkpoint_every=3, sf_w_perceptual=0.0)  # fmt: skip
    return SparseFusionConfig(**{**base, **kw})


def test_sparsefusion_smoke_from_two_views(tiny_vldm, tmp_path):
    """A few steps from 2 views: the EFT bootstrap, then the multi-step distillation, each recorded."""
    from fewview.methods.protocol_run import run_protocol

    cfg = sf_config(tiny_vldm, sf_w_perceptual=0.1)
    rec = run_protocol(EXAMPLE, "blender-split", tmp_path / "run", cfg, progress=False, lpips=False)
    assert rec["method"] == "sparsefusion"
    assert {"render", "step"} <= set(rec["timings"])  # metrics.json records the time split
    import json

    hist = json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())["history"]
    assert hist  # logged every 10 steps or at the end
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoint").iterdir())
    assert not any("vldm" in f or "unet" in f or "eft" in f for f in files), files


def test_sparsefusion_terms_switch_from_bootstrap_to_distillation(tiny_vldm):
    from fewview.data import load_blender
    from fewview.methods.sparsefusion import SparseFusionFitter

    scene = load_blender(EXAMPLE, "train")
    fit = SparseFusionFitter(scene, [0, 1], sf_config(tiny_vldm, sf_w_perceptual=0.1))
    assert len(fit.path) == 6 and fit.eft_rgb.shape == (6, 3, 64, 64)
    assert set(fit.novel_terms()) == {"eft_colour", "eft_silhouette"}
    fit.step = 4
    terms = fit.novel_terms()
    assert set(terms) == {"multistep_l1", "multistep_perceptual"}
    assert {"cache", "render", "encode", "denoise", "decode"} <= set(fit.timings)  # the time split is recorded
    fit.timings = {}  # a caller starting a fresh split (the profile benchmark does) gets the phases in its dict
    fit.clock("step", lambda: None)
    assert set(fit.timings) == {"step"}
    sum(terms.values()).backward()
    grads = [p.grad for p in fit.state.field.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0  # the distillation loss reaches the field


def test_sparsefusion_bootstrap_on_a_pixel_subset_matches_those_pixels_of_the_whole_image(tiny_vldm):
    """``sf_bootstrap_rays`` renders random pixels of the path camera; each is compared with the EFT colour and
    silhouette of the same pixel: with a renderer that depends only on the ray, the subset's loss equals the mean
    of the whole image's per-pixel loss over those pixels."""
    from fewview.data import load_blender
    from fewview.methods.sparsefusion import SparseFusionFitter
    from fewview.render.volume import RenderOutput

    scene = load_blender(EXAMPLE, "train")
    fit = SparseFusionFitter(scene, [0, 1], sf_config(tiny_vldm, sf_bootstrap_rays=300))

    def fake(o, d, perturb=False, generator=None):  # a deterministic colour and opacity per ray
        rgb = torch.sigmoid(3 * d + o)
        w = rgb[:, 2]
        return RenderOutput(rgb=rgb, depth=w, opacity=rgb[:, 1], weights=w, t=w, deltas=w, ray_indices=w)

    fit.state.render_rays = fake
    seen = []
    fit.render_path = lambda i, pixels=None, f=fit.render_path: seen.append(pixels) or f(i, pixels)
    terms = fit.bootstrap_terms(2)
    pixels = seen[0]
    assert pixels is not None and len(pixels) == 300 and len(set(pixels.tolist())) == 300
    rgb, opacity, _ = fit.render_path(2)
    per_pixel = torch.nn.functional.huber_loss(rgb[0], fit.eft_rgb[2], delta=0.1, reduction="none").mean(0)
    torch.testing.assert_close(terms["eft_colour"], per_pixel.flatten()[pixels].mean())
    sil = torch.nn.functional.huber_loss(opacity[0], fit.eft_mask[2], delta=0.1, reduction="none")[0]
    torch.testing.assert_close(terms["eft_silhouette"], sil.flatten()[pixels].mean())
    whole = SparseFusionFitter(scene, [0, 1], sf_config(tiny_vldm, sf_bootstrap_rays=0))
    whole.state.render_rays = fake
    full = whole.bootstrap_terms(2)
    torch.testing.assert_close(full["eft_colour"], per_pixel.mean())  # 0: the whole image


def test_sparsefusion_never_reads_evaluation_views(tiny_vldm, monkeypatch):
    """With the default path, views other than the inputs -- their images and their cameras -- change nothing:
    replacing them with noise and NaN poses gives the same fit."""
    from fewview.cameras import Cameras
    from fewview.data import load_blender
    from fewview.methods.sparsefusion import SparseFusionFitter

    monkeypatch.setenv("FEWVIEW_ADAPT_THREADS", "0")
    scene = load_blender(EXAMPLE, "test")
    bad = scene.select(list(range(len(scene))))
    c2w = bad.cameras.c2w.clone()
    c2w[2:] = float("nan")
    bad.cameras = Cameras(c2w, bad.cameras.K, bad.cameras.size)
    bad.images = bad.images.clone()
    bad.images[2:] = torch.rand_like(bad.images[2:])
    cfg = sf_config(tiny_vldm)
    a = SparseFusionFitter(scene, [0, 1], cfg).run(progress=False)
    b = SparseFusionFitter(bad, [0, 1], cfg).run(progress=False)
    for (k, va), vb in zip(a.field.state_dict().items(), b.field.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_sparsefusion_fit_resumes_exactly(tiny_vldm, tmp_path, monkeypatch):
    """Stopped after its step-6 checkpoint (in the distillation phase) and rerun in a process with other RNG state, a
    SparseFusion fit ends where an uninterrupted one does: the path is a function of the seed, and each step's
    pixels, path camera, t and noise come from the checkpointed generator."""
    from fewview.data import load_blender
    from fewview.methods.sparsefusion import SparseFusionFitter

    monkeypatch.setenv("FEWVIEW_ADAPT_THREADS", "0")
    scene = load_blender(EXAMPLE, "train")
    cfg = sf_config(tiny_vldm, steps=9, checkpoint_every=6, sf_bootstrap_rays=200)
    full = SparseFusionFitter(scene, [0, 1], cfg, tmp_path / "full").run(progress=False)
    kill_at(SparseFusionFitter(scene, [0, 1], cfg, tmp_path / "cut"), 7)
    torch.manual_seed(4321)
    again = SparseFusionFitter(scene, [0, 1], cfg, tmp_path / "cut")
    steps = []
    resumed = again.run(progress=False, callback=lambda f: steps.append(f.step))
    assert steps == [7, 8, 9]  # continued from the checkpoint, not from the start
    for k, v in full.field.state_dict().items():
        torch.testing.assert_close(resumed.field.state_dict()[k], v, atol=1e-6, rtol=0)


def test_sparsefusion_official_sampler_draws_from_the_fit_generator(tiny_vldm):
    """``sf_denoise_eta=1, sf_clip_x0=10`` (the official stochastic sampler) changes the distillation target, and
    its step noise comes from the fit's generator: the global RNG state changes nothing (so fits resume exactly)."""
    from fewview.data import load_blender
    from fewview.methods.sparsefusion import SparseFusionFitter

    scene = load_blender(EXAMPLE, "train")

    def terms(seed: int, **kw) -> float:
        fit = SparseFusionFitter(scene, [0, 1], sf_config(tiny_vldm, **kw))
        fit.step = 4  # past the bootstrap
        torch.manual_seed(seed)
        return float(fit.novel_terms()["multistep_l1"])

    official = dict(sf_denoise_eta=1.0, sf_clip_x0=10.0)
    assert terms(1, **official) == terms(2, **official)
    assert terms(1, **official) != terms(1)


@pytest.mark.parametrize("objective", ["sds", "eft", "samples"])
def test_sparsefusion_baseline_objectives(tiny_vldm, objective):
    from fewview.data import load_blender
    from fewview.methods.sparsefusion import SparseFusionFitter

    scene = load_blender(EXAMPLE, "train")
    fit = SparseFusionFitter(scene, [0, 1], sf_config(tiny_vldm, sf_objective=objective, sf_sample_steps=2))
    fit.step = 5  # past the bootstrap
    terms = fit.novel_terms()
    want = {"sds": {"sds"}, "eft": {"eft_colour", "eft_silhouette"}, "samples": {"eft_colour", "eft_silhouette"}}
    assert set(terms) == want[objective]
    sum(terms.values()).backward()
    assert sum(float(p.grad.abs().sum()) for p in fit.state.field.parameters() if p.grad is not None) > 0


def test_recon_sparsefusion_writes_a_viewable_run(tiny_vldm, tmp_path):
    from fewview.cli import main

    out = tmp_path / "sf"
    rc = main(["recon", str(EXAMPLE), "--method", "sparsefusion", "--model", str(tiny_vldm), "--views", "0,1",
               "--fit-steps", "4", "--frames", "2", "--split", "test", "--out", str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    assert (out / "turntable.mp4").is_file() and (out / "checkpoint" / "meta.json").is_file()
    assert len(list((out / "views").glob("*_rgb.png"))) == 7  # the 9 test views but the 2 inputs


def test_phase_clock_sums_each_phase_and_returns_the_result():
    from fewview.guidance import PhaseClock

    timings: dict = {}
    clock = PhaseClock(timings)
    assert clock("a", lambda x, y=0: x + y, 2, y=3) == 5
    clock("a", time.sleep, 0.01)
    clock("b", time.sleep, 0.0)
    assert set(timings) == {"a", "b"} and timings["a"] >= 0.01
    assert PhaseClock(None)("a", abs, -4) == 4  # no dict: nothing is timed
