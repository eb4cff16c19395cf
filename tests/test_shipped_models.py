"""The checkpoints fewview ships load with safetensors and beat stated floors on held-out objects.

Held-out objects are regenerated from the default fewview-objects recipe (2112 objects, seed 0, 64x64),
so the test needs no dataset on disk: the first test-split objects, 2 inputs by the objects-2view rule,
PSNR on every third of the other 30 views, on white."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fewview.data import get_protocol
from fewview.methods.recon import ModelRenderer, model_image_size
from fewview.metrics import psnr
from fewview.objects.builder import ObjectsConfig, held_out_views, splits
from fewview.train import from_pretrained

MODELS = Path(__file__).resolve().parents[1] / "fewview" / "assets" / "models"
# Measured on exactly these views with the checkpoints trained on the mixed set: pixelNeRF 18.34 dB, EFT 19.10 dB
# (background alone: 11.95 dB; the earlier checkpoints trained without household objects: 18.76, 19.36). The floors
# sit under them by a margin for floating-point differences between machines; docs/benchmarks.md has the full
# objects-2view benchmark, household objects included.
FLOORS = {"pixelnerf": 18.0, "eft": 18.5}
RECIPE = ObjectsConfig(objects=2112)
# PSNR floors of the diffusion checkpoints on the views below. Measured: vae64 36.45 dB. vae128 runs on held-out
# objects rendered at 128², leaving out its 128² training objects: 35.99 dB, and its floor sits above the 35.19 dB
# of vae64 on the same views, so it asserts the fine-tune's gain. Inpainting, PSNR on the unknown pixels, model
# (strongest baseline): all masks 15.37; half masks 15.63 (blurred 13.32); warp masks 19.45 (white 20.85, then
# nearest 7.57); their object pixels 11.04 (blurred 10.94).
TRAIN128 = splits(ObjectsConfig(objects=400, res=128))["train"]
VAE_FLOORS = {"vae64": (35.5, RECIPE, ()), "vae128": (35.6, replace(RECIPE, res=128), TRAIN128)}
INPAINT_FLOOR = 14.5


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_shipped_checkpoint_loads_and_beats_its_floor(name):
    folder = MODELS / name
    model = from_pretrained(folder)
    assert model.model_name == name and (folder / "model.safetensors").stat().st_size < 8 * 2**20
    scores, blank = [], []
    for oi, img, cams, _ in held_out_views(RECIPE, 2):
        split = get_protocol("objects-2view")(oi, len(img))
        inp, ev = list(split.inputs), list(split.evaluation)[::3]
        render = ModelRenderer(model, img[inp], cams[inp], model_image_size(folder))
        pred = torch.stack([render(cams[i])["rgb"] for i in ev])
        scores.append(float(psnr(pred, img[ev]).mean()))
        blank.append(float(psnr(torch.ones_like(img[ev]), img[ev]).mean()))
    mean = sum(scores) / len(scores)
    assert mean >= FLOORS[name], f"{name}: {mean:.2f} dB < floor {FLOORS[name]}"
    assert mean > sum(blank) / len(blank) + 3.0  # far better than predicting the background


@pytest.mark.parametrize("name", sorted(VAE_FLOORS))
def test_shipped_vae_reconstructs_held_out_views(name):
    folder = MODELS / name
    vae = from_pretrained(folder)
    assert vae.model_name == "vae" and (folder / "model.safetensors").stat().st_size < 8 * 2**20
    floor, recipe, exclude = VAE_FLOORS[name]
    scores, colour = [], []
    with torch.no_grad():
        for _, img, _, _ in held_out_views(recipe, 2, exclude, every=4):
            rec = vae.reconstruct(img)
            scores += psnr(rec, img).tolist()
            colour.append([float((x.max(1).values - x.min(1).values).mean()) for x in (rec, img)])
    mean = sum(scores) / len(scores)
    assert mean >= floor, f"{name}: {mean:.2f} dB < floor {floor}"
    # Colour survives (a grey reconstruction still scores ~28 dB on white-background views): mean saturation
    # (max - min channel) within 0.8-1.25x of the truth's, with a small absolute slack for near-grey objects.
    # Measured (reconstruction, truth): vae64 (0.0487, 0.0470), (0.0118, 0.0117); vae128 (0.0149, 0.0147),
    # (0.0397, 0.0384). The slack is for grey objects, e.g. a snowman at (0.0037, 0.0029).
    assert all(0.8 * gt - 0.002 < rec < 1.25 * gt + 0.002 for rec, gt in colour), colour


def test_shipped_inpainting_model_beats_simple_fills():
    """Half-image masks, IPSM warp masks and their object-only part (the pixels a warp leaves unknown on the
    object: the rest is white background, which a constant white fill already gets right) on held-out views: the
    model's fill (DDIM 50, one sample) scores a higher PSNR on the unknown pixels than the strongest of the
    white, mean-colour, blurred and nearest-known-pixel fills, on each kind of mask."""
    from fewview.diffusion import blurred_fill, inverse_warp, mean_fill, nearest_fill, white_fill
    from fewview.diffusion.masks import halves

    folder = MODELS / "inpaint64"
    model = from_pretrained(folder)
    assert model.model_name == "inpaint" and (folder / "model.safetensors").stat().st_size < 8 * 2**20
    kinds = ("half", "warp", "warp-object")
    gts, masks = [], []
    for oi, img, cams, depth in held_out_views(RECIPE, 4):
        q, c = torch.randperm(len(img), generator=torch.Generator().manual_seed(oi))[:2].tolist()
        c2w, K = cams.c2w.float(), cams.K.float()
        _, valid = inverse_warp(depth[q : q + 1], c2w[q : q + 1], K[q : q + 1], img[c : c + 1], depth[c : c + 1],
                                c2w[c : c + 1], K[c : c + 1])  # fmt: skip
        half = halves(*img.shape[-2:])[:1]  # left half unknown
        gts += [img[q : q + 1]] * 3
        masks += [half, (~valid).float(), (~valid).float() * (depth[q : q + 1] > 0).float()]
    gt, m = torch.cat(gts), torch.cat(masks)
    fills = {"model": model.inpaint(gt, m, steps=50, generator=torch.Generator().manual_seed(0)),
             "white": white_fill(gt, m), "mean": mean_fill(gt, m), "blurred": blurred_fill(gt, m),
             "nearest": nearest_fill(gt, m)}  # fmt: skip
    scores = {}
    for name, f in fills.items():
        p = psnr(gt * (1 - m) + f * m, gt, m)
        scores[name] = {"all": float(p.mean()), **{k: float(p[i :: len(kinds)].mean()) for i, k in enumerate(kinds)}}
    assert scores["model"]["all"] >= INPAINT_FLOOR, scores
    for kind in kinds:
        # Full warp masks are ~90 % white background, where the white fill is exact: the model loses to it there
        # (measured 19.45 vs 20.85 dB) and is held to the other fills; on the object's pixels it must win.
        rivals = [n for n in fills if n != "model" and not (kind == "warp" and n == "white")]
        best = max(rivals, key=lambda n: scores[n][kind])
        assert scores["model"][kind] > scores[best][kind], (kind, best, scores)


def test_inpaint_cli_runs_the_64_model_at_128_and_refuses_sizes_off_the_vae_grid(tmp_path, capsys):
    """The mask's downsampling follows the VAE (factor 4), not the model's training latent size."""
    import numpy as np
    from PIL import Image

    from fewview.cli import main

    img = np.full((128, 128, 3), 255, np.uint8)
    img[32:96, 32:96] = (200, 40, 40)
    Image.fromarray(img).save(tmp_path / "img.png")
    mask = np.zeros((128, 128), np.uint8)
    mask[:, :64] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    args = ["inpaint", str(tmp_path / "img.png"), str(tmp_path / "mask.png"), "--steps", "2"]
    assert main([*args, "--out", str(tmp_path / "o.png"), "--size", "128"]) == 0
    assert Image.open(tmp_path / "o.png").size == (256, 128)  # [masked input | one sample]
    assert main([*args, "--out", str(tmp_path / "bad.png"), "--size", "126"]) == 2
    err = capsys.readouterr().err
    assert "not a multiple of the VAE's factor 4" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.png").exists()


# Depth network (IPSM's monocular depth stand-in) on held-out views, disparity up to scale and shift: mean Pearson
# correlation with the true disparity on the object's pixels, and the scale-and-shift-invariant loss on whole
# images against the silhouette alone (1 on the object, 0 behind), which gets the background right and nothing
# else. Measured with the shipped depth64 on these views: Pearson 0.901 (the lowest view 0.35), SSI loss 0.0152 vs
# 0.0490 for the silhouette.
DEPTH_FLOORS = {"pearson_object": 0.85}


def test_shipped_depth_network_beats_the_silhouette():
    from fewview.models.depth import disparity_target, pearson, ssi_loss

    folder = MODELS / "depth64"
    net = from_pretrained(folder)
    assert net.model_name == "depth" and (folder / "model.safetensors").stat().st_size < 8 * 2**20
    corr, loss, sil_loss = [], [], []
    with torch.no_grad():
        for _, img, _, depth in held_out_views(RECIPE, 4, every=4):
            pred = net.predict(img)
            target = disparity_target(depth)
            obj = depth > 0
            corr += pearson(pred, target, obj).tolist()
            loss.append(float(ssi_loss(pred, target)))
            sil_loss.append(float(ssi_loss(obj.float(), target)))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    assert mean(corr) >= DEPTH_FLOORS["pearson_object"], mean(corr)
    assert mean(loss) < 0.5 * mean(sil_loss), (mean(loss), mean(sil_loss))


# DFM from one view (objects-1view inputs, one target sampled 180° around in 20 DDIM steps): PSNR of one sampled
# scene on every third held-out view (measured 14.37 and 15.92 dB, mean 15.15; the white background alone: 11.97),
# and how well two sampled scenes reproduce the input view at its camera (17.82-19.68 dB).
DFM_FLOORS = {"novel": 14.5, "context": 17.0}


@pytest.mark.skipif(not (MODELS / "dfm" / "config.json").is_file(), reason="no shipped dfm checkpoint")
def test_shipped_dfm_samples_scenes_that_keep_the_input_view():
    from fewview.methods.dfm import target_orbit

    folder = MODELS / "dfm"
    model = from_pretrained(folder).eval()
    assert model.model_name == "dfm" and (folder / "model.safetensors").stat().st_size < 8 * 2**20
    novel, context, differ, blank = [], [], [], []
    for oi, img, cams, _ in held_out_views(RECIPE, 2):
        split = get_protocol("objects-1view")(oi, len(img))
        i0, ev = split.inputs[0], list(split.evaluation)[::3]
        ctx, ctx_cams = img[i0 : i0 + 1], cams[i0 : i0 + 1].to(torch.float32)
        target = target_orbit(ctx_cams, 2)[1:]
        scenes = [model.sample(ctx, ctx_cams, target, 1, steps=20, generator=torch.Generator().manual_seed(s))[0]
                  for s in (0, 1)]  # fmt: skip
        novel.append(float(psnr(torch.stack([scenes[0].render(cams[i])["rgb"] for i in ev]), img[ev]).mean()))
        blank.append(float(psnr(torch.ones_like(img[ev]), img[ev]).mean()))
        context += [float(psnr(s.render(ctx_cams)["rgb"][None], ctx).mean()) for s in scenes]
        differ.append(float((scenes[0].image - scenes[1].image).abs().mean()))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    assert mean(novel) >= DFM_FLOORS["novel"] and mean(novel) > mean(blank) + 2.0, (novel, blank)
    assert min(context) >= DFM_FLOORS["context"], context
    assert min(differ) > 1e-3, differ  # two seeds, two scenes



# The VLDMs (SparseFusion): on held-out objects from 2 inputs (objects-2view), every third other view at 64²: PSNR of
# the EFT's colour; of the multi-step denoise from t = 0.3 of the true view, conditioned on the EFT features (the
# distillation's target when the field is right); of one DDIM sample (20 steps) from pure noise. The ε-prediction
# `vldm` samples poorly from noise, the v-prediction `vldm-v` well (docs/sparsefusion.md, benchmarks/vldm_noise.py).
# Measured on 20 views: vldm 18.59 / 24.44 / 9.99 dB, vldm-v 18.75 / 24.46 / 18.27 dB.
VLDM_FLOORS = {
    "vldm": {"eft": 17.5, "denoise": 23.0, "sample": 8.5},
    "vldm-v": {"eft": 17.5, "denoise": 23.0, "sample": 17.0},
}


@pytest.mark.parametrize("name", sorted(VLDM_FLOORS))
def test_shipped_vldm_keeps_views_and_samples_them(name):
    import torch.nn.functional as F

    folder = MODELS / name
    floors = VLDM_FLOORS[name]
    model = from_pretrained(folder).eval()
    assert model.model_name == "vldm" and (folder / "model.safetensors").stat().st_size < 8 * 2**20
    scores = {k: [] for k in floors}
    g = torch.Generator().manual_seed(0)
    for oi, img, cams, _ in held_out_views(RECIPE, 2):
        split = get_protocol("objects-2view")(oi, len(img))
        inp = list(split.inputs)
        for i in list(split.evaluation)[::3]:
            cond, rgb = model.condition(img[inp], cams[inp], cams[i : i + 1])
            eft = F.interpolate(rgb, size=img.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
            with torch.no_grad():
                z, _ = model.multistep_denoise(model.vae.encode(img[i : i + 1]), 0.3, cond, generator=g)
                den = model.vae.decode(z).clamp(0, 1)
            sample = model.sample(img[inp], cams[inp], cams[i : i + 1], 1, 20, generator=g)
            for k, x in (("eft", eft), ("denoise", den), ("sample", sample)):
                scores[k].append(float(psnr(x, img[i : i + 1]).mean()))
    means = {k: sum(v) / len(v) for k, v in scores.items()}
    assert all(means[k] >= floors[k] for k in floors), means


# The view encoder (Real3D's semantic loss): on 8 held-out objects × 8 views, a view composited on grey must find
# another view of its own object (on white) as its nearest neighbour; measured 1.000, the frozen AlexNet trunk 0.875.
VIEWENC_TOP1 = 0.95


def test_shipped_view_encoder_recognises_objects_across_views():
    from fewview.models.lrm import LRM, LRMConfig

    folder = MODELS / "viewenc"
    enc = from_pretrained(folder).eval()
    assert enc.model_name == "viewenc" and (folder / "model.safetensors").stat().st_size < 4 * 2**20
    q, g, obj = [], [], []
    for oi, img, _, depth in held_out_views(RECIPE, 8, every=4):
        m = (depth > 0).float()
        q.append(img * m + 0.5 * (1 - m))
        g.append(img)
        obj += [oi] * len(img)
    q, g, obj = torch.cat(q), torch.cat(g), torch.tensor(obj)

    def top1(f):
        with torch.no_grad():
            s = f(q) @ f(g).T
        s.fill_diagonal_(-2.0)
        return float((obj[s.argmax(1)] == obj).float().mean())

    ours, alexnet = top1(enc.features), top1(LRM(LRMConfig(semantic_encoder="alexnet")).semantic_features)
    assert ours >= VIEWENC_TOP1 and ours > alexnet, (ours, alexnet)


# The LRM (A-only) and Real3D (self-trained on household single views), from one input view (objects-1view, on
# grey) of held-out objects: PSNR on every third other view, on white. Measured: lrm 15.98 dB (15.73, 16.23; the
# white background alone: 11.97); real3d 15.34 (14.91, 15.77; the view-encoder `curriculum` row: 15.11): these are
# set A's kind of object, which its self-training on household single views trades away a little. docs/real3d.md has
# the household objects' benchmark.
LRM_FLOORS = {"lrm": 15.5, "real3d": 14.8}


@pytest.mark.parametrize("name", sorted(LRM_FLOORS))
def test_shipped_lrm_reconstructs_held_out_objects_from_one_view(name):
    folder = MODELS / name
    model = from_pretrained(folder).eval()
    assert model.model_name == "lrm" and (folder / "model.safetensors").stat().st_size < 4 * 2**20
    scores, blank = [], []
    for oi, img, cams, depth in held_out_views(RECIPE, 2):
        split = get_protocol("objects-1view")(oi, len(img))
        i0, ev = split.inputs[0], list(split.evaluation)[::3]
        m = (depth[i0 : i0 + 1] > 0).float()
        grey = img[i0 : i0 + 1] * m + model.config.input_background * (1 - m)
        render = ModelRenderer(model, grey, cams[i0 : i0 + 1], model_image_size(folder))
        with torch.no_grad():
            pred = torch.stack([render(cams[i])["rgb"] for i in ev])
        scores.append(float(psnr(pred, img[ev]).mean()))
        blank.append(float(psnr(torch.ones_like(img[ev]), img[ev]).mean()))
    mean = sum(scores) / len(scores)
    assert mean >= LRM_FLOORS[name], f"{name}: {mean:.2f} dB < floor {LRM_FLOORS[name]}"
    assert mean > sum(blank) / len(blank) + 2.0, (scores, blank)
