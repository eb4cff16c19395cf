"""Diffusion core: schedule conversions, samplers against diffusers' schedulers and exact-ε round trips,
the multi-step denoiser's step count, CFG, SDS gradients, inverse-warp masks, VAE/LDM save-load round trips
and smoke training (single process, resume, DDP) with tiny configs."""

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from fewview.cameras import camera_rays
from fewview.diffusion import (
    ImageVAE,
    InpaintConfig,
    InpaintingLDM,
    LatentDiffusion,
    LDMConfig,
    NoiseSchedule,
    VAEConfig,
    blurred_fill,
    box_mask,
    half_mask,
    inverse_warp,
    mean_fill,
    multistep_denoise,
    multistep_steps,
    nearest_fill,
    sample_grid,
    sds_loss,
    sds_residual,
    training_masks,
    white_fill,
)
from fewview.objects.builder import ObjectsConfig, build
from fewview.pretrained import resolve_model_dir
from fewview.train import DistInfo, ObjectsSource, TrainConfig, Trainer, from_pretrained, sample_batch, save_pretrained

from .helpers import SPHERE_CENTER, SPHERE_RADIUS, ddp_weight_gap, kill_at, make_cams

TINY_VAE = VAEConfig(image_size=24, block_out_channels=(8, 16), norm_num_groups=4)
TINY_UNET = dict(latent_size=12, block_out_channels=(16, 32), attention=(0, 1), norm_num_groups=8,
                 attention_head_dim=8, context_dim=16)  # fmt: skip


@pytest.fixture(scope="module")
def objects_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects")
    build(ObjectsConfig(objects=10, views=6, res=24, shard_size=4), root, progress=False)
    return root


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_pretrained(ImageVAE(TINY_VAE), tmp_path_factory.mktemp("vae") / "vae")


def oracle(schedule: NoiseSchedule, x0: torch.Tensor):
    """The exact denoiser for a point mass at x0, in the schedule's parameterisation."""

    def fn(x_t, t):
        a = schedule.alpha_bar(t, x_t)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        if schedule.prediction_type == "epsilon":
            return eps
        if schedule.prediction_type == "sample":
            return x0.expand_as(x_t)
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    return fn


def smooth_denoiser(x, t):
    return 0.4 * x + 0.001 * t * torch.sin(x)


# ------------------------------------------------------------------------------------------ schedule


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_targets_convert_back_to_noise_and_clean_sample(pred):
    s = NoiseSchedule(prediction_type=pred)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 4, 6, 6, generator=g), torch.randn(5, 4, 6, 6, generator=g)
    t = torch.tensor([0, 10, 400, 850, 999])
    x_t = s.add_noise(x0, noise, t)
    a = s.alpha_bar(t, x0)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    eps, x0_hat = s.eps_x0(s.target(x0, noise, t), x_t, t)
    torch.testing.assert_close(eps, noise, atol=2e-3 if pred == "sample" else 1e-5, rtol=1e-4)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("method", ["ddim", "plms"])
def test_noising_then_exact_denoising_recovers_x0(pred, method):
    s = NoiseSchedule(prediction_type=pred)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64)
    # from pure noise on diffusers' grid, and from a partly noised latent on a partial grid
    out, _ = sample_grid(oracle(s, x0), torch.randn(x0.shape, generator=g, dtype=torch.float64), s.grid(20), s, method)
    torch.testing.assert_close(out, x0, atol=1e-8, rtol=0)
    x_t = s.add_noise(x0, torch.randn(x0.shape, generator=g, dtype=torch.float64), torch.tensor([613, 613]))
    out, _ = sample_grid(oracle(s, x0), x_t, s.partial_grid(613, 7), s, method)
    torch.testing.assert_close(out, x0, atol=1e-8, rtol=0)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_diffusers_ddim_scheduler(eta):
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(2, 4, 6, 6, generator=g)
    ours, calls = sample_grid(smooth_denoiser, x_T, s.grid(25), s, "ddim", eta, torch.Generator().manual_seed(9))
    assert calls == 25
    ref = s.diffusers_scheduler("ddim")
    ref.set_timesteps(25)
    gn, x = torch.Generator().manual_seed(9), x_T.clone()
    for t in ref.timesteps:
        noise = torch.randn(x.shape, generator=gn) if eta > 0 else None
        x = ref.step(smooth_denoiser(x, int(t)), t, x, eta=eta, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("steps", [1, 2, 3, 12])
def test_plms_matches_diffusers_pndm_scheduler(steps):
    s = NoiseSchedule()
    x_T = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    ours, calls = sample_grid(smooth_denoiser, x_T, s.grid(steps), s, "plms")
    ref = s.diffusers_scheduler("plms")
    ref.set_timesteps(steps)
    x = x_T.clone()
    for t in ref.timesteps:
        x = ref.step(smooth_denoiser(x, int(t)), t, x).prev_sample
    assert calls == len(ref.timesteps)  # PNDM evaluates the first step twice
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def official_plms(fn, x, grid, s: NoiseSchedule, generator, clip: float):
    """SparseFusion's stochastic PLMS written out in imagen-pytorch's form: the raw ε evaluations are combined
    (a Heun step first, then Adams–Bashforth), the clean estimate of the combination is clipped, and the step
    draws from the posterior q(x_s | x_t, x̂0): mean α_s((1 − c)·x_t/α_t + c·x̂0), variance σ_s²·c, with
    c = 1 − SNR_t/SNR_s."""

    def posterior(xt, e, t, tp):
        a_t, a_s = float(s.alpha_bar(t, xt).flatten()[0]), float(s.alpha_bar(tp, xt).flatten()[0])
        x0 = ((xt - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)).clamp(-clip, clip)
        c = 1.0 if a_s == 1 else 1 - (a_t / (1 - a_t)) / (a_s / (1 - a_s))
        noise = torch.randn(xt.shape, generator=generator, dtype=xt.dtype)
        return math.sqrt(a_s) * ((1 - c) * xt / math.sqrt(a_t) + c * x0) + math.sqrt((1 - a_s) * c) * noise

    combine = {1: lambda e: e[-1], 2: lambda e: (3 * e[-1] - e[-2]) / 2,
               3: lambda e: (23 * e[-1] - 16 * e[-2] + 5 * e[-3]) / 12,
               4: lambda e: (55 * e[-1] - 59 * e[-2] + 37 * e[-3] - 9 * e[-4]) / 24}  # fmt: skip
    ets: list = []
    for i, (t, tp) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        e = fn(x, t)
        if i == 0:
            e1 = fn(posterior(x, e, t, tp), tp)
            x, ets = posterior(x, (e + e1) / 2, t, tp), [e]
            continue
        ets = (ets + [e])[-4:]
        x = posterior(x, combine[len(ets)](ets), t, tp)
    return x


def test_stochastic_plms_matches_the_official_posterior_sampler():
    """PLMS with η = 1 and a clip is SparseFusion's sampler (DDPM posterior steps on the combined ε, the clean
    estimate of the combination clipped)."""
    s = NoiseSchedule(beta_schedule="squaredcos_cap_v2")
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    grid = s.partial_grid(700, 7)
    ours, _ = sample_grid(smooth_denoiser, x, grid, s, "plms", 1.0, torch.Generator().manual_seed(9), clip_x0=1.5)
    ref = official_plms(smooth_denoiser, x, grid, s, torch.Generator().manual_seed(9), 1.5)
    torch.testing.assert_close(ours, ref, atol=1e-9, rtol=1e-9)
    unclipped, _ = sample_grid(smooth_denoiser, x, grid, s, "plms", 1.0, torch.Generator().manual_seed(9))
    assert float((unclipped - ours).abs().max()) > 1e-3  # the clip was active
    deterministic, _ = sample_grid(smooth_denoiser, x, grid, s, "plms", 0.0, clip_x0=1.5)
    assert float((deterministic - ours).abs().max()) > 1e-3  # and so was the noise
    # With the exact denoiser of a point mass, posterior steps land on x0 (DDIM, η = 1); the official PLMS does
    # not, because its Adams–Bashforth combination mixes ε evaluated under different noise draws.
    x0 = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    x_t = s.add_noise(x0, x, torch.tensor([700, 700]))
    out, _ = sample_grid(oracle(s, x0), x_t, grid, s, "ddim", 1.0, torch.Generator().manual_seed(9), clip_x0=10.0)
    torch.testing.assert_close(out, x0, atol=1e-8, rtol=0)
    out, _ = sample_grid(oracle(s, x0), x_t, grid, s, "plms", 1.0, torch.Generator().manual_seed(9), clip_x0=10.0)
    assert float((out - x0).abs().mean()) > 0.1


def test_sampler_rejects_bad_grids():
    s = NoiseSchedule()
    with pytest.raises(ValueError, match="ends at -1"):
        sample_grid(smooth_denoiser, torch.zeros(1, 1, 2, 2), [500, 200], s)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_grid(smooth_denoiser, torch.zeros(1, 1, 2, 2), [5, -1], s, "euler")


@pytest.mark.parametrize("t", [0.005, 0.05, 0.237, 0.5, 0.99])
@pytest.mark.parametrize("method", ["ddim", "plms"])
def test_multistep_denoise_step_count(t, method):
    s = NoiseSchedule()
    x0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    calls = []

    def fn(x, tt):
        calls.append(tt)
        return oracle(s, x0)(x, tt)

    out, info = multistep_denoise(fn, x0, t, s, method=method, generator=torch.Generator().manual_seed(5))
    n = max(min(math.floor(100 * t), 50), 1)
    assert multistep_steps(t) == n and info["steps"] == n
    # step i holds continuous time (i + 1) / T: t = 0.237 is step 236, t = 0.005 step 4
    assert info["t_index"] == {0.005: 4, 0.05: 49, 0.237: 236, 0.5: 499, 0.99: 989}[t] and calls[0] == info["t_index"]
    assert len(calls) == n + (1 if method == "plms" and n > 1 else 0)
    torch.testing.assert_close(out, x0, atol=1e-8, rtol=0)
    # a cap on the step count (the demo's cheaper distillation) keeps the start and the exact end
    out, info = multistep_denoise(fn, x0, t, s, method=method, generator=torch.Generator().manual_seed(5), max_steps=7)
    assert info["steps"] == multistep_steps(t, 7) == min(n, 7)
    torch.testing.assert_close(out, x0, atol=1e-8, rtol=0)


# ------------------------------------------------------------------------------------------ SDS


def test_sds_residual_weights_and_loss_gradient():
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(6)
    z = torch.randn(2, 4, 5, 5, generator=g)
    noise = torch.randn(z.shape, generator=g)
    delta = torch.randn(z.shape, generator=g)
    t = 700
    fn = lambda x, tt: oracle(s, z)(x, tt) + delta  # noqa: E731  (exact ε plus a known error)
    a = s.alpha_bar(t, z)
    torch.testing.assert_close(sds_residual(fn, z, t, s, noise, "sds"), (1 - a) * delta, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sds_residual(fn, z, t, s, noise, "ipsm"), a * delta, atol=1e-4, rtol=1e-4)
    assert float(sds_residual(oracle(s, z), z, t, s, noise).abs().max()) < 1e-4
    res = sds_residual(fn, z, t, s, noise)
    zz = z.clone().requires_grad_(True)
    sds_loss(zz, res).backward()
    torch.testing.assert_close(zz.grad, res)
    zz.grad = None
    sds_loss(zz, res, "mean").backward()
    torch.testing.assert_close(zz.grad, res / res.numel())


# ------------------------------------------------------------------------------------------ masks


def test_inverse_warp_identity_and_sphere_visibility():
    cams = make_cams(n=6, h=20, w=24)
    rays = camera_rays(cams, dtype=torch.float64)
    oc = rays.origins - SPHERE_CENTER
    b = (oc * rays.directions).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - SPHERE_RADIUS**2)
    hit = disc > 0
    t_hit = torch.where(hit, -b - disc.clamp_min(0).sqrt(), torch.zeros_like(b))
    pts = rays.origins + t_hit[..., None] * rays.directions  # (B,H,W,3)
    fwd = cams.c2w[:, None, None, :3, 2].double()
    depth = torch.where(hit, ((pts - rays.origins) * fwd).sum(-1), torch.zeros_like(b))[:, None].float()
    image = pts.permute(0, 3, 1, 2).float() * hit[:, None]  # colour = world position of the surface
    c2w, K = cams.c2w.float(), cams.K.float()

    warped, valid = inverse_warp(depth[:1], c2w[:1], K[:1], image[:1], depth[:1], c2w[:1], K[:1])
    assert torch.equal(valid, depth[:1] > 0) and torch.equal(warped, image[:1])

    warped, valid = inverse_warp(depth[1:2], c2w[1:2], K[1:2], image[:1], depth[:1], c2w[:1], K[:1])
    # a target surface point is seen by the source camera iff it faces it (convex sphere)
    normal = pts[1] - SPHERE_CENTER
    to_cam = cams.c2w[0, :3, 3].double() - pts[1]
    cos = (to_cam * normal).sum(-1) / (to_cam.norm(dim=-1) * normal.norm(dim=-1)).clamp_min(1e-9)
    v = valid[0, 0]
    assert bool(v.any()) and not bool((v & ~hit[1]).any())
    faces = hit[1] & (cos > 0.3)
    assert float((v & faces).sum()) / float(faces.sum()) > 0.9  # clearly visible points warp
    assert not bool((v & (cos < -0.25)).any())  # hidden points never do (grazing ones pass the depth tolerance)
    # where valid, the warped world positions agree with the target's to within a source pixel's footprint
    err = (warped[0] - image[1]).norm(dim=0)[v]
    assert float(err.max()) < 0.25


def test_half_box_and_training_masks(objects_root):
    g = torch.Generator().manual_seed(0)
    m = half_mask(8, 10, 12, g)
    assert m.shape == (8, 1, 10, 12) and torch.all(m.mean((1, 2, 3)) == 0.5)
    bm = box_mask(8, 20, 20, g)
    assert bool((bm.mean((1, 2, 3)) > 0).all()) and bool((bm.mean((1, 2, 3)) < 1).all())
    src = ObjectsSource(objects_root, "train", depth=True)
    batch = sample_batch(src, 0, 0, 6, (1, 1), 1, 1)
    assert batch.query_depth.shape == (6, 1, 24, 24) and batch.context_depth.shape == (6, 1, 1, 24, 24)
    warp = training_masks(batch, (1, 0, 0, 0), batch.item_generators())
    assert set(warp.unique().tolist()) <= {0.0, 1.0} and 0 < float(warp.mean()) < 1
    again = training_masks(batch, (1, 1, 1, 1), batch.item_generators())
    assert torch.equal(again, training_masks(batch, (1, 1, 1, 1), batch.item_generators()))
    halves = [sample_batch(src, 0, 0, 6, (1, 1), 1, 1, rank=r, world=2) for r in range(2)]
    split = [training_masks(h, (1, 1, 1, 1), h.item_generators()) for h in halves]
    assert torch.equal(torch.cat(split), again)  # an item's mask does not depend on the rest of the batch
    full = training_masks(batch, (0, 0, 0, 1), batch.item_generators())
    assert bool((full == 1).all())


def test_baseline_fills():
    u = torch.linspace(0, 1, 32)
    img = torch.stack([u[None, :].expand(32, 32), u[:, None].expand(32, 32), 0.3 + 0 * u[None, :].expand(32, 32)])[None]
    hole = torch.zeros(1, 1, 32, 32)
    hole[..., 12:18, 10:16] = 1
    for fill in (mean_fill, blurred_fill, nearest_fill, white_fill):
        out = fill(img, hole)
        assert torch.equal(out * (1 - hole), img * (1 - hole))  # known pixels untouched
        if fill is not white_fill:
            torch.testing.assert_close(fill(torch.full_like(img, 0.25), hole), torch.full_like(img, 0.25))
    assert torch.equal(white_fill(img, hole)[..., 12:18, 10:16], torch.ones(1, 3, 6, 6))
    # nearest known pixel: a full-height stripe (columns 10-15) in a black | white image (edge at column 13) is
    # filled black on its left half and white on its right
    two = torch.zeros(1, 3, 32, 32)
    two[..., 13:] = 1.0
    stripe = torch.zeros(1, 1, 32, 32)
    stripe[..., 10:16] = 1
    near = nearest_fill(two, stripe)
    assert torch.equal(near[..., 10:13], torch.zeros(1, 3, 32, 3))
    assert torch.equal(near[..., 13:16], torch.ones(1, 3, 32, 3))
    known = 1 - hole
    torch.testing.assert_close(mean_fill(img, hole)[0, :, 14, 12], (img * known).sum((2, 3))[0] / known.sum())
    err = (blurred_fill(img, hole) - img).abs()[hole.expand_as(img).bool()]
    assert float(err.max()) < 0.1  # a smooth ramp is recovered from nearby pixels (to ~3 pixels of slope)


# ------------------------------------------------------------------------------------------ models


def test_vae_shapes_scale_calibration_and_diffusers_wrapping(objects_root, tmp_path):
    torch.manual_seed(0)
    vae = ImageVAE(TINY_VAE).eval()
    x = torch.rand(3, 3, 24, 24)
    assert vae.encode(x).shape == (3, 4, 12, 12) and vae.decode(vae.encode(x)).shape == x.shape
    big = ImageVAE(VAEConfig(image_size=128, block_out_channels=(8, 16, 16), norm_num_groups=4))
    assert big.encode(torch.rand(1, 3, 128, 128)).shape == (1, 4, 32, 32)  # the 128² variant: 32²×4 latents
    scale = vae.calibrate(ObjectsSource(objects_root, "train"), n=64)
    with torch.no_grad():
        z = torch.cat([vae.encode(sample_batch(ObjectsSource(objects_root, "train"), 0, s, 32, (1, 1), 1, 1).query)
                   for s in range(0, 64, 32)])  # fmt: skip
    assert abs(float(z.detach().std()) - 1) < 0.05 and scale > 0
    vae.autoencoder.save_pretrained(str(tmp_path / "sd_vae"))  # a diffusers folder, like Stable Diffusion's vae/
    wrapped = ImageVAE.from_diffusers(tmp_path / "sd_vae", scale_factor=0.5)
    torch.testing.assert_close(wrapped.decode(wrapped.encode(x)), vae.decode(vae.encode(x)))
    assert float(wrapped.scale_factor) == 0.5


def test_vae_loss_sees_colour_and_weighs_objects():
    from fewview.diffusion.vae import reconstruction_terms

    x = torch.full((1, 3, 8, 8), 1.0)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    x = x * (1 - mask) + torch.tensor([0.2, 0.6, 0.1]).reshape(1, 3, 1, 1) * mask  # a green object on white
    grey = x.mean(1, keepdim=True).expand_as(x)
    r = reconstruction_terms(grey, x, mask, 4.0)
    assert float(r["chroma"]) > 0.1 and float(reconstruction_terms(x, x, mask, 4.0)["chroma"]) == 0
    assert float(reconstruction_terms(grey + 0.1, grey, mask, 4.0)["chroma"]) < 1e-7  # a grey-level error is not chroma
    # the same error weighs 1 + 4 times more on the object than on the background
    obj, bg = x.clone(), x.clone()
    obj[..., 3, 3] += 0.1
    bg[..., 0, 0] -= 0.1
    ratio = reconstruction_terms(obj, x, mask, 4.0)["l1"] / reconstruction_terms(bg, x, mask, 4.0)["l1"]
    assert abs(float(ratio) - 5.0) < 1e-5


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_save_load_round_trips(vae_dir, tmp_path, dtype):
    torch.manual_seed(1)
    ldm = InpaintingLDM(InpaintConfig(vae=str(vae_dir), **TINY_UNET)).eval()
    save_pretrained(ldm, tmp_path / "ldm", dtype=dtype)
    back = from_pretrained(tmp_path / "ldm")
    assert type(back) is InpaintingLDM and back.config == ldm.config
    x, tt = torch.randn(2, 4, 12, 12), torch.tensor([3, 900])
    cond = {"concat": torch.randn(2, 5, 12, 12)}
    tol = 0 if dtype == "float32" else 2e-2
    torch.testing.assert_close(back.denoise(x, tt, **cond), ldm.denoise(x, tt, **cond), atol=tol, rtol=tol)
    files = load_file(tmp_path / "ldm" / "model.safetensors")
    assert not any(k.startswith("_vae") or "autoencoder" in k for k in files)  # the frozen VAE is not copied
    vae = from_pretrained(vae_dir)
    assert torch.equal(vae.scale_factor, ImageVAE(TINY_VAE).scale_factor) and type(vae) is ImageVAE


def test_wrapping_a_diffusers_unet_folder(vae_dir, tmp_path):
    torch.manual_seed(7)
    ldm = InpaintingLDM(InpaintConfig(vae=str(vae_dir), **TINY_UNET)).eval()
    ldm.unet.save_pretrained(str(tmp_path / "unet"))  # a diffusers folder, like SD-Inpainting's unet/
    wrapped = LatentDiffusion.from_diffusers(tmp_path / "unet", from_pretrained(vae_dir), "inpaint")
    x, t, cond = torch.randn(2, 4, 12, 12), torch.tensor([1, 999]), {"concat": torch.randn(2, 5, 12, 12)}
    with torch.no_grad():
        torch.testing.assert_close(wrapped.predict(x, t, cond, 2.0), ldm.predict(x, t, cond, 2.0))
    with pytest.raises(ValueError, match="input channels"):
        LatentDiffusion.from_diffusers(tmp_path / "unet", from_pretrained(vae_dir), "view")


def test_classifier_free_guidance(vae_dir):
    torch.manual_seed(2)
    ldm = LatentDiffusion(LDMConfig(task="view", vae=str(vae_dir), **TINY_UNET)).eval()
    with torch.no_grad():
        ldm.null_context.normal_()
        x, t = torch.randn(2, 4, 12, 12), torch.tensor([50, 600])
        cond = {"concat": torch.randn(2, 4, 12, 12), "context": torch.randn(2, 1, 16)}
        c = ldm.denoise(x, t, **cond)
        u = ldm.denoise(x, t, **ldm.null_condition(cond))
        assert torch.equal(ldm.predict(x, t, cond, guidance=1.0), c)
        torch.testing.assert_close(ldm.predict(x, t, cond, guidance=3.0), u + 3 * (c - u), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ldm.predict(x, t, cond, guidance=0.0), u, atol=1e-5, rtol=1e-5)
        assert float((c - u).abs().max()) > 1e-3  # the condition matters


@pytest.mark.parametrize("task", ["view", "inpaint"])
def test_traced_unet_matches_eager_and_follows_weight_updates(vae_dir, task):
    import copy

    torch.manual_seed(3)
    ldm = LatentDiffusion(LDMConfig(task=task, vae=str(vae_dir), **TINY_UNET)).eval()
    cond = {"concat": torch.randn(2, ldm.concat_channels, 12, 12)}
    if task == "view":
        cond["context"] = torch.randn(2, 1, 16)

    def both(x, t, c):
        ldm.trace_unet = False
        eager = ldm.denoise(x, t, **c)
        ldm.trace_unet = True
        return ldm.denoise(x, t, **c), eager

    x, t = torch.randn(2, 4, 12, 12), torch.tensor([5, 700])
    with torch.no_grad():
        traced, eager = both(x, t, cond)
        torch.testing.assert_close(traced, eager, atol=1e-6, rtol=1e-6)
        assert len(ldm._traces) == 1
        one = {k: v[:1] for k, v in cond.items()}
        traced, eager = both(x[:1], 300, one)  # another batch size: a second trace
        torch.testing.assert_close(traced, eager, atol=1e-6, rtol=1e-6)
        assert len(ldm._traces) == 2
        for p in ldm.unet.parameters():  # an optimiser step, in place: the trace must see it
            p.add_(0.05 * torch.randn_like(p))
        traced, eager = both(x, t, cond)
        torch.testing.assert_close(traced, eager, atol=1e-6, rtol=1e-6)
    assert len(ldm._traces) == 2
    out = ldm.denoise(x, t, **cond)  # with gradients: the eager UNet, which autograd can train
    assert out.grad_fn is not None
    twin = copy.deepcopy(ldm)
    assert twin._traces == {} and len(ldm._traces) == 2
    with torch.no_grad():
        for b in range(1, 11):  # many shapes keep at most 8 traces, the newest
            ldm.denoise(torch.randn(b, 4, 12, 12), 10, **{k: v[:1].expand(b, *v.shape[1:]) for k, v in cond.items()})
    assert len(ldm._traces) == 8 and max(k[0][0][0] for k in ldm._traces) == 10


def tiny_train_cfg(root, **kw):
    base = dict(data=str(root), steps=2, batch_size=2, rays=8, checkpoint_every=2, eval_every=2, warmup=1,
                context_min=1, context_max=1, device="cpu")  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("task", ["inpaint", "view", "unconditional"])
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_two_step_smoke_training(objects_root, vae_dir, tmp_path, task, pred):
    torch.manual_seed(3)
    cls, ccls = (InpaintingLDM, InpaintConfig) if task == "inpaint" else (LatentDiffusion, LDMConfig)
    model = cls(ccls(task=task, vae=str(vae_dir), prediction=pred, eval_steps=2, **TINY_UNET))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src = ObjectsSource(objects_root, "train", depth=model.needs_depth)
    ema = Trainer(model, tiny_train_cfg(objects_root), src, tmp_path / "run", DistInfo()).run(progress=False)
    hist = json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())["history"]
    assert hist and all(math.isfinite(h["loss"]) for h in hist)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (tmp_path / "run" / "eval" / "step_000002.png").is_file()
    back = from_pretrained(tmp_path / "run" / "pretrained")
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v.cpu())
    if task == "inpaint":
        img = torch.rand(1, 3, 24, 24)
        out = back.inpaint(img, half_mask(1, 24, 24), steps=2)
        assert out.shape == img.shape and bool(torch.isfinite(out).all())


def test_vae_trains_and_calibrates_its_scale(objects_root, tmp_path):
    torch.manual_seed(4)
    cfg = tiny_train_cfg(objects_root, steps=3, lr=1e-3)
    Trainer(ImageVAE(TINY_VAE), cfg, ObjectsSource(objects_root, "train"), tmp_path / "vae", DistInfo()).run(
        progress=False
    )
    back = from_pretrained(tmp_path / "vae" / "pretrained")
    assert float(back.scale_factor) != 1.0  # set from data at the end of training
    assert (tmp_path / "vae" / "eval" / "step_000002.png").is_file()
    # fine-tuning starts from those weights (e.g. the 128² variant from the 64² VAE)
    cfg0 = tiny_train_cfg(objects_root, steps=0, init=str(tmp_path / "vae" / "pretrained"))
    tuned = Trainer(ImageVAE(TINY_VAE), cfg0, ObjectsSource(objects_root, "train"), None, DistInfo()).run(
        progress=False
    )
    for k, v in back.state_dict().items():
        if k != "scale_factor":
            torch.testing.assert_close(tuned.state_dict()[k], v)
    # decoder-only fine-tuning keeps the encoder, hence every latent (and the scale), unchanged
    cfg2 = tiny_train_cfg(objects_root, steps=2, lr=1e-3, init=str(tmp_path / "vae" / "pretrained"))
    src = ObjectsSource(objects_root, "train")
    dec = Trainer(ImageVAE(replace(TINY_VAE, train_encoder=False)), cfg2, src, None, DistInfo()).run(progress=False)
    for k, v in back.state_dict().items():
        if k.startswith(("autoencoder.encoder.", "autoencoder.quant_conv.")) or k == "scale_factor":
            assert torch.equal(dec.state_dict()[k], v), k
    assert any(not torch.equal(dec.state_dict()[k], v) for k, v in back.state_dict().items() if "decoder" in k)
    with pytest.raises(ValueError, match="holds a vae model"):
        Trainer(InpaintingLDM(InpaintConfig(**TINY_UNET)), cfg0, None, None, DistInfo())
    # a shipped model is named without its path (the 128² variant starts from vae64)
    shipped = from_pretrained(resolve_model_dir("vae64"))
    start = Trainer(ImageVAE(shipped.config), replace(cfg0, init="vae64"), None, None, DistInfo()).model
    for k, v in shipped.state_dict().items():
        assert torch.equal(start.state_dict()[k], v), k


def test_resume_gives_the_same_weights(objects_root, vae_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FEWVIEW_ADAPT_THREADS", "0")  # a thread count that changes with load changes float sums
    cfg = tiny_train_cfg(objects_root, steps=4, eval_every=0)
    src = ObjectsSource(objects_root, "train", depth=True)
    mk = lambda: InpaintingLDM(InpaintConfig(vae=str(vae_dir), **TINY_UNET))  # noqa: E731
    torch.manual_seed(5)
    full = Trainer(mk(), cfg, src, tmp_path / "full", DistInfo()).run(progress=False)
    torch.manual_seed(5)
    kill_at(Trainer(mk(), cfg, src, tmp_path / "resumed", DistInfo()), 3)
    torch.manual_seed(77)
    resumed = Trainer(mk(), cfg, src, tmp_path / "resumed", DistInfo()).run(progress=False)
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, atol=1e-6, rtol=0)


def test_ddp_two_processes_match_one_process(objects_root, vae_dir, tmp_path):
    args = ["train", "inpaint", "--data", str(objects_root), "--steps", "2", "--batch-size", "4", "--rays", "8",
            "--context-min", "1", "--context-max", "1", "--checkpoint-every", "2", "--eval-every", "0",
            "--device", "cpu", "--quiet", "--model-vae", str(vae_dir), "--model-latent-size", "12",
            "--model-block-out-channels", "16", "32", "--model-attention", "0", "1", "--model-norm-num-groups", "8",
            "--model-attention-head-dim", "8"]  # fmt: skip
    assert ddp_weight_gap(args, tmp_path) < 1e-5


def test_cosine_schedule_matches_its_closed_form():
    """SparseFusion's VLDM schedule: ᾱ(t) = cos²((t + 0.008)/1.008·π/2); at t = 0.5 it is 0.494 and at t = 0.3
    0.787 (Stable Diffusion's scaled-linear schedule has 0.28 and 0.59 there), and the multi-step denoiser
    noises to the ᾱ of the schedule it is given at the drawn t."""
    from fewview.diffusion.schedule import cosine_alpha_bar

    assert abs(float(cosine_alpha_bar(0.5)) - math.cos(0.508 / 1.008 * math.pi / 2) ** 2) < 1e-12
    assert abs(float(cosine_alpha_bar(0.5)) - 0.4938) < 1e-3 and abs(float(cosine_alpha_bar(0.3)) - 0.7868) < 1e-3
    cos = NoiseSchedule(1000, "squaredcos_cap_v2")
    sd = NoiseSchedule()
    x0 = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    for t in (0.05, 0.3, 0.5, 0.8, 0.95):
        want = float(cosine_alpha_bar(t) / cosine_alpha_bar(0.0))
        got = float(cos.alpha_bar(cos.continuous_to_index(t), x0).flatten()[0])
        assert abs(got - want) < 1e-6, (t, got, want)
        _, info = multistep_denoise(oracle(cos, x0), x0, t, cos, method="ddim")
        assert abs(info["alpha_bar"] - want) < 1e-6
    assert float(sd.alpha_bar(sd.continuous_to_index(0.5), x0).flatten()[0]) < 0.3  # the schedule the issue flagged


def test_dynamic_thresholding():
    """Imagen's rule: s = the 0.995 quantile of |x0| (at least 1); clip to ±s and divide by s."""
    from fewview.diffusion.samplers import dynamic_threshold

    small = torch.linspace(-0.8, 0.8, 1000).reshape(1, 1, 10, 100)
    assert torch.equal(dynamic_threshold(small), small)  # s = 1: nothing changes inside [-1, 1]
    big = torch.linspace(-4.0, 4.0, 1001).reshape(1, 1, 7, 143)
    s = float(torch.quantile(big.abs().flatten(), 0.995))
    out = dynamic_threshold(big)
    assert abs(float(out.abs().max()) - 1.0) < 1e-6
    torch.testing.assert_close(out, big.clamp(-s, s) / s)
    both = dynamic_threshold(torch.cat([big * 0.1, big]))
    assert both.shape == (2, 1, 7, 143) and float(both[1].abs().max()) <= 1 + 1e-6
