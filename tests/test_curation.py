"""Real3D's occlusion-based curation on constructed masks and disparities."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fewview.data.curation import CurationConfig, boundary, curate, erode

H = W = 200
CFG = CurationConfig(min_scale=50)


def disc(cx: float, cy: float, r: float) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    return (x - cx) ** 2 + (y - cy) ** 2 < r * r


def test_the_disc_in_front_is_kept_and_the_one_behind_rejected():
    front = disc(80, 100, 40)
    back = disc(130, 100, 40) & ~front
    disparity = torch.where(front, 0.5, torch.where(back, 0.25, 0.0))
    a, b = curate(torch.stack([front, back]), disparity, CFG)
    assert a.keep and a.reason == "kept" and a.votes == 0
    assert not b.keep and b.reason == "occluded" and b.votes >= 10
    # swap the depths: now the first disc is behind (its visible outline is still whole, but its contact points
    # see a nearer neighbour just outside)
    a2, b2 = curate(torch.stack([front, back]), torch.where(front, 0.25, torch.where(back, 0.5, 0.0)), CFG)
    assert not a2.keep and a2.reason == "occluded"


def test_a_lone_instance_is_kept_and_filters_apply():
    lone = disc(100, 100, 40)
    (v,) = curate(lone[None], lone.float(), CFG)
    assert v.keep and v.sampled == 0  # no contact boundary: nothing occludes it
    small = disc(100, 100, 10)
    assert curate(small[None], small.float(), CFG)[0].reason == "small"
    cut = disc(20, 100, 40)  # runs off the left edge
    assert curate(cut[None], cut.float(), CFG)[0].reason == "truncated"


def test_a_non_convex_boundary_is_rejected():
    """An instance whose contact boundary is a 1-pixel line: inside and outside queries along its normal agree."""
    blob = disc(70, 100, 35)
    line = torch.zeros(H, W, dtype=torch.bool)
    line[100, 100:135] = True  # a thin arm reaching the neighbour
    inst = blob | line
    other = disc(160, 100, 25)
    disparity = torch.where(inst, 0.5, torch.where(other, 0.25, 0.0))
    v, _ = curate(torch.stack([inst, other]), disparity, CFG)
    assert not v.keep and v.reason == "non-convex boundary"


def test_morphology():
    m = disc(100, 100, 30)
    assert erode(m, 9).sum() < m.sum() and (erode(m, 9) & ~m).sum() == 0
    b = boundary(m, 9)
    assert (b & erode(m, 9)).sum() == 0 and (b | erode(m, 9)).equal(m)


def test_single_view_set_exposes_exactly_one_view_per_object(tmp_path):
    """Real3D's set B: household training objects give one view each, fixed by the seed; the others are not in
    memory. Set A (every other object) keeps all its views."""
    import numpy as np
    import pytest

    from fewview.objects.builder import ObjectsConfig, build
    from fewview.train import ObjectsSource, SingleViewSource

    from .test_household import make_library

    src = tmp_path / "libs"
    src.mkdir()
    for k in range(8):
        make_library(src / f"L{k}.sh3f", extra_models=False)
    root = tmp_path / "mixed"
    build(ObjectsConfig(objects=6, views=5, res=16, recipe="mixed", household=str(src), shard_size=4), root,
          progress=False)  # fmt: skip
    full = ObjectsSource(root, "train", group="household")
    b = SingleViewSource(root, "train", seed=3)
    assert len(b) == len(full) > 0 and b.rgba.shape[1] == 1 and b.num_views(0) == 1
    for s in range(len(b)):
        img, _, cam = b.views(s, [0])
        want = torch.from_numpy(full.rgba[s, b.view[s], ..., :3]).float().div(255).permute(2, 0, 1)
        assert torch.equal(img[0], want) and torch.equal(cam.c2w[0].double(), full.c2w[s, b.view[s]])
        with pytest.raises(IndexError):
            b.views(s, [1])
    assert b.view == SingleViewSource(root, "train", seed=3).view  # fixed by the seed
    assert len({tuple(SingleViewSource(root, "train", seed=k).view) for k in range(6)}) > 1
    a = ObjectsSource(root, "train", group="parametric")
    assert a.rgba.shape[1] == 5 and not set(a.ids) & set(b.ids)
    assert np.isin(b.ids, ObjectsSource(root, "train").ids).all()


def test_lrm_canonical_frame_trains_and_renders(tmp_path):
    """The LRM sees cameras relative to its input: the input camera maps to the canonical one; a few supervised
    steps lower the loss on a tiny set; DDP with 2 processes matches 1."""
    from fewview.cameras import Cameras, look_at
    from fewview.models.lrm import LRM, LRMConfig, canonical_frame
    from fewview.objects.builder import ObjectsConfig, build
    from fewview.train import DistInfo, ObjectsSource, TrainConfig, Trainer

    from .helpers import ddp_weight_gap

    eye = torch.tensor([[1.0, 2.5, 1.2]], dtype=torch.float64)
    c2w = look_at(eye, torch.zeros_like(eye), torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))
    T = canonical_frame(c2w)
    canon = T @ c2w
    assert torch.allclose(canon[0, :3, 3], torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64), atol=1e-9)
    assert torch.allclose((T @ torch.tensor([0.0, 0, 0, 1], dtype=torch.float64))[0, :3].norm(),
                          torch.tensor(3.0 - float(eye.norm()), dtype=torch.float64).abs(), atol=1e-9)  # fmt: skip
    root = tmp_path / "objects"
    build(ObjectsConfig(objects=6, views=5, res=32, shard_size=4), root, progress=False)
    cfg = LRMConfig(image_size=32, patch=8, width=32, heads=2, encoder_layers=1, decoder_layers=1, plane_tokens=4,
                    plane_res=16, plane_channels=8, hidden=16, samples=12)  # fmt: skip
    torch.manual_seed(0)
    model = LRM(cfg)
    tc = TrainConfig(data=str(root), steps=30, batch_size=2, rays=64, checkpoint_every=30, eval_every=0, warmup=1,
                     context_min=1, context_max=1, device="cpu", lr=3e-3)  # fmt: skip
    tr = Trainer(model, tc, ObjectsSource(root, "train"), tmp_path / "lrm", DistInfo())
    tr.run(progress=False)
    assert tr.history[-1]["loss"] < tr.history[0]["loss"]
    src = ObjectsSource(root, "train")
    img, _, cams = src.views(0, [0, 2])
    out = model.render(img[0], cams[0], Cameras(cams.c2w[1:], cams.K[1:], cams.size[1:]))
    assert out["rgb"].shape == (3, 32, 32) and float(out["opacity"].max()) <= 1
    args = ["train", "lrm", "--data", str(root), "--steps", "2", "--batch-size", "4", "--rays", "16",
            "--context-min", "1", "--context-max", "1", "--checkpoint-every", "2", "--eval-every", "0", "--device",
            "cpu", "--quiet", "--model-image-size", "32", "--model-width", "32", "--model-heads", "2",
            "--model-encoder-layers", "1", "--model-decoder-layers", "1", "--model-plane-tokens", "4",
            "--model-plane-res", "16", "--model-plane-channels", "8", "--model-hidden", "16",
            "--model-samples", "8"]  # fmt: skip
    assert ddp_weight_gap(args, tmp_path / "ddp") < 1e-5


def _mixed_root(tmp_path, res=32):
    from fewview.objects.builder import ObjectsConfig, build

    from .test_household import make_library

    src = tmp_path / "libs"
    src.mkdir()
    for k in range(8):
        make_library(src / f"L{k}.sh3f", extra_models=False)
    root = tmp_path / "mixed"
    build(ObjectsConfig(objects=8, views=5, res=res, recipe="mixed", household=str(src), shard_size=4), root,
          progress=False)  # fmt: skip
    return root


TINY_LRM = dict(image_size=32, patch=8, width=32, heads=2, encoder_layers=1, decoder_layers=1, plane_tokens=4,
                plane_res=16, plane_channels=8, hidden=16, samples=8, semantic_views=3, semantic_size=16)  # fmt: skip


def test_lrm_self_training_reads_single_views_and_stops_the_cycles_first_pass(tmp_path):
    """Self-training pairs set A batches with set B single views (query only, no context); the cycle's first pass
    (the curriculum render) carries no gradient while the second pass does; every loss term is logged; the
    semantic loss's max picks the least similar view."""
    from fewview.models.lrm import LRM, LRMConfig
    from fewview.train import DistInfo, TrainConfig, Trainer
    from fewview.train.trainer import make_source

    root = _mixed_root(tmp_path)
    torch.manual_seed(0)
    model = LRM(LRMConfig(**TINY_LRM, self_training=True))
    tc = TrainConfig(data=str(root), steps=2, batch_size=2, rays=16, checkpoint_every=2, eval_every=0, warmup=1,
                     context_min=1, context_max=1, device="cpu", lr=1e-3)  # fmt: skip
    source = make_source(tc, "train", self_training=model.self_training_groups)
    assert source.single_view.rgba.shape[1] == 1 and not set(source.ids) & set(source.single_view.ids)
    calls = []
    real = model.render_image

    def spy(planes, *a, **k):
        calls.append(planes.requires_grad)
        return real(planes, *a, **k)

    model.render_image = spy
    tr = Trainer(model, tc, source, tmp_path / "lrm", DistInfo())
    tr.run(progress=False)
    # per step: the curriculum render (detached planes) then the semantic renders (with gradient)
    assert calls[0::2] == [False, False] and calls[1::2] == [True, True]
    logged = tr.history[-1] if tr.history else {}
    batch_logs = model(_one_batch(source, tc))[1]
    for key in ("mse", "lpips", "mask", "sv_mse", "sv_mask", "cycle_mse", "cycle_lpips", "cycle_mask", "semantic"):
        assert key in batch_logs, key
    assert logged == {} or "loss" in logged


def _one_batch(source, tc):
    from fewview.train.data import sample_batch

    b = sample_batch(source, 0, 0, 2, (1, 1), None, 8)
    b.single = sample_batch(source.single_view, 1, 0, 2, (0, 0), None, 8)
    b.progress = 0.5
    return b


@pytest.mark.parametrize("stop_grad", [True, False])
def test_lrm_cycle_gradient_skips_the_first_pass(tmp_path, monkeypatch, stop_grad):
    """Backpropagating the cycle term reaches the weights through the re-encoded second pass only: zeroing the
    first pass's planes' gradient path changes nothing (the novel render is computed under no_grad). The
    end-to-end ablation (``cycle_stop_grad=False``) lets it reach the first pass too; without the curriculum the
    pose range is the full one (p = 1) from the first step."""
    import fewview.cameras
    from fewview.models.lrm import LRM, LRMConfig
    from fewview.train import TrainConfig
    from fewview.train.trainer import make_source

    root = _mixed_root(tmp_path)
    torch.manual_seed(0)
    cfg = LRMConfig(**TINY_LRM, self_training=True, w_sv_rgb=0, w_sv_mask=0, w_semantic=0, w_rgb=0, w_mask=0,
                    w_lpips=0, cycle_stop_grad=stop_grad, curriculum=stop_grad)  # fmt: skip
    progress, real_angles = [], fewview.cameras.curriculum_angles
    monkeypatch.setattr(fewview.cameras, "curriculum_angles", lambda p, *a: progress.append(p) or real_angles(p, *a))
    model = LRM(cfg)
    tc = TrainConfig(data=str(root), steps=1, batch_size=2, context_min=1, context_max=1)
    source = make_source(tc, "train", self_training=model.self_training_groups)
    batch = _one_batch(source, tc)
    seen, n = {}, [0]
    real = model.triplane

    def spy(image):
        planes, k = real(image), n[0]
        n[0] += 1
        planes.register_hook(lambda g: seen.__setitem__(k, float(g.abs().sum())))
        return planes

    model.triplane = spy
    loss, logs = model(batch)
    loss.backward()
    # triplane runs for A's input (0), B's input (1) and the cycle's re-encoded input (2): with every other term
    # weighted 0, only the re-encoded pass gets a gradient; the curriculum render of pass 1 passes none back
    assert n[0] == 3 and seen[2] > 0 and logs["cycle_mse"] > 0
    assert (seen.get(1, 0.0) == 0.0) == stop_grad
    assert set(progress) == ({0.5} if stop_grad else {1.0})  # the batch's progress is 0.5


def test_recon_lrm_renders_views_turntable_and_mesh(tmp_path, capsys):
    """`fewview recon --method lrm|real3d`: one image in; novel views, a turntable and a mesh (PLY + GLB) of the
    triplane in world coordinates, whose density is the model's at the canonical point."""
    from fewview.cli import main
    from fewview.models.lrm import LRM, LRMConfig
    from fewview.pretrained import save_pretrained

    from .test_dfm import EXAMPLE

    torch.manual_seed(0)
    model = LRM(LRMConfig(**TINY_LRM)).eval()
    with torch.no_grad():  # a solid ball of density inside the box, so that the mesh is not empty
        model.mlp[-1].bias.copy_(torch.tensor([6.0, 0.0, 0.0, 0.0]))
    folder = save_pretrained(model, tmp_path / "lrm", {"image_size": 32})
    from fewview.data import load_scene

    scene = load_scene(EXAMPLE, split="test")
    sc = model.scene(scene.composite((0.5, 0.5, 0.5))[0], scene.cameras[:1])
    x = torch.rand(50, 3) - 0.5
    sig, rgb = sc.density(x)
    want_sig, want_rgb = model.query(sc.planes, sc._canon(x)[None])
    assert torch.allclose(sig, want_sig[0]) and torch.allclose(rgb, want_rgb[0])
    for method in ("lrm", "real3d"):
        out = tmp_path / method
        assert main(["recon", str(EXAMPLE), "--method", method, "--model", str(folder), "--views", "0",
                     "--frames", "2", "--split", "test", "--out", str(out)]) == 0  # fmt: skip
        assert len(list((out / "views").glob("*_rgb.png"))) == 8 and (out / "turntable.mp4").is_file()
        assert (out / "mesh.ply").is_file() and (out / "mesh.glb").is_file()
    assert main(["recon", str(EXAMPLE), "--method", "pixelnerf", "--model", str(folder), "--views", "0",
                 "--split", "test", "--out", str(tmp_path / "bad")]) == 2  # fmt: skip
    assert "holds a lrm model" in capsys.readouterr().err


def test_clutter_composition_labels_and_curation_score():
    """Two discs, the nearer one overlapping the farther: visible masks by z-buffer, ground truth clean / occluded,
    an instance leaving the canvas is truncated; the curation of the composed image keeps exactly the clean one, so
    precision and recall are 1."""
    from fewview.data.curation import CurationConfig, curate
    from fewview.objects.clutter import compose, score_curation

    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    disc = (((yy - 19.5) ** 2 + (xx - 19.5) ** 2) < 18**2).float()
    rgba = torch.cat([torch.rand(3, 40, 40), disc[None]])
    depth = disc * 2.0
    im = compose([rgba, rgba, rgba], [depth, depth, depth], [(10, 10), (20, 40), (100, -15)], [0.0, 1.0, 0.0],
                 128, 1.0, 0.02)  # fmt: skip
    assert im.truth == ["clean", "occluded", "truncated"]
    assert int(im.masks[1].sum()) < int(disc.sum()) and int(im.masks[0].sum()) == int(disc.sum())
    assert not (im.masks[0] & im.masks[1]).any()
    assert float(im.depth[30, 30]) == 2.0 and float(im.depth[0, 127]) == 0.0
    disp = torch.where(im.depth > 0, 1 / im.depth.clamp_min(1e-6), torch.zeros_like(im.depth))
    verdicts = curate(im.masks, disp, CurationConfig(min_scale=20, border=2))
    assert [v.reason for v in verdicts] == ["kept", "occluded", "truncated"]
    score = score_curation([im], [verdicts])
    assert score["precision"] == 1.0 and score["recall"] == 1.0 and score["instances"] == 3


def test_data_curate_builds_scores_and_writes_the_pool(tmp_path, capsys):
    import json

    from fewview.cli import main

    root = _mixed_root(tmp_path)
    out = tmp_path / "cur"
    assert main(["data", "curate", "--data", str(root), "--split", "train", "--images", "4", "--canvas", "64",
                 "--depth", "renderer", "--out", str(out)]) == 0  # fmt: skip
    rec = json.loads((out / "curation.json").read_text())
    assert len(rec["images"]) == 4 and 0 <= rec["score"]["recall"] <= 1 or rec["score"]["clean"] == 0
    assert (out / "images" / "0000.png").is_file() and (out / "images" / "0000_instances.png").is_file()
    assert "precision" in capsys.readouterr().out


def test_info_nce_has_its_closed_form():
    """Orthonormal pairs: every row's positive logit is 1/τ and its N − 1 negatives 0, so the loss is
    log(1 + (N − 1)·e^(−1/τ)); marking every pair as the same object leaves no negatives and the loss is 0."""
    from fewview.models.viewenc import info_nce

    n, tau = 5, 0.2
    z = torch.eye(n, 8)
    loss, acc = info_nce(z, z, tau)
    assert torch.allclose(loss, torch.log1p(torch.tensor((n - 1) * math.exp(-1 / tau)))) and acc == 1
    loss, _ = info_nce(z, z, tau, torch.ones(n, n, dtype=torch.bool))
    assert abs(float(loss)) < 1e-6
    swapped, acc = info_nce(z, z.roll(1, 0), tau)  # every partner is another row's: chance is gone
    assert swapped > loss and acc == 0


def test_supervised_lrm_training_reads_set_a_only(tmp_path, capsys):
    """`fewview train lrm` without self-training reads the parametric objects (set A) only: set B's objects may be
    read one view each, never with their multi-view renders."""
    from fewview.cli import main as cli
    from fewview.models.lrm import LRM, LRMConfig
    from fewview.train import TrainConfig
    from fewview.train.trainer import make_source

    root = _mixed_root(tmp_path)
    tc = TrainConfig(data=str(root))
    a, everything = len(make_source(tc, "train", group="parametric")), len(make_source(tc, "train"))
    assert 0 < a < everything and LRM(LRMConfig(**TINY_LRM)).data_group == "parametric"
    args = ["train", "lrm", "--data", str(root), "--out", str(tmp_path / "lrm"), "--steps", "1", "--batch-size", "2",
            "--context-min", "1", "--context-max", "1", "--eval-every", "0", "--checkpoint-every", "1", "--device",
            "cpu", "--quiet"] + [f"--model-{k.replace('_', '-')}={v}" for k, v in TINY_LRM.items()]  # fmt: skip
    assert cli(args) == 0
    assert f"training lrm on {a} scenes" in capsys.readouterr().out


def test_view_encoder_trains_on_set_a_and_serves_the_lrm_semantic_loss(tmp_path):
    """`fewview train viewenc` reads only the parametric objects (set A) and logs its InfoNCE and top-1; an LRM
    whose ``semantic_encoder`` names the trained folder uses its features, frozen and never saved with the LRM."""
    from fewview.cli import main as cli
    from fewview.models.lrm import LRM, LRMConfig
    from fewview.pretrained import from_pretrained
    from fewview.train import TrainConfig
    from fewview.train.trainer import make_source

    root = _mixed_root(tmp_path)
    tc = TrainConfig(data=str(root))
    a = make_source(tc, "train", group="parametric")
    assert len(a) < len(make_source(tc, "train"))
    out = tmp_path / "viewenc"
    args = ["train", "viewenc", "--data", str(root), "--out", str(out), "--steps", "30", "--batch-size", "4",
            "--context-min", "1", "--context-max", "1", "--lr", "2e-3", "--warmup", "1", "--eval-every", "0",
            "--checkpoint-every", "30", "--device", "cpu", "--quiet", "--model-widths", "8", "16",
            "--model-dim", "16", "--model-image-size", "32"]  # fmt: skip
    assert cli(args) == 0
    enc = from_pretrained(out / "pretrained")
    history = json.loads((out / "checkpoint" / "meta.json").read_text())["history"]
    assert enc.model_name == "viewenc" and {"infonce", "top1"} <= set(history[-1])
    img = torch.rand(3, 3, 32, 32)
    f = enc.features(img)
    assert f.shape == (3, 16) and torch.allclose(f.norm(dim=-1), torch.ones(3), atol=1e-5)
    lrm = LRM(LRMConfig(**TINY_LRM, semantic_encoder=str(out / "pretrained")))
    assert torch.allclose(lrm.semantic_features(img), f, atol=1e-6)
    assert not any(k.startswith("_viewenc") or "stages" in k for k in lrm.state_dict())
    assert not any(p.requires_grad for p in lrm._view_encoder("cpu").parameters())


def test_instance_view_cuts_an_instance_out_in_its_render_framing():
    """A render placed at its own size comes back exactly where it is unoccluded; the part an occluder hides and the
    part off the canvas are background, with mask 0."""
    from fewview.objects.clutter import compose, instance_view

    g = torch.Generator().manual_seed(0)
    a = torch.cat([torch.rand(3, 8, 8, generator=g), torch.ones(1, 8, 8)])
    b = torch.cat([torch.zeros(3, 4, 4), torch.ones(1, 4, 4)])
    im = compose([a, b], [torch.full((8, 8), 2.0), torch.full((4, 4), 1.0)], [(2, -3), (2, 3)], [0.0, 0.0], 12, 1.0,
                 0.02)  # fmt: skip
    im.boxes = [(2, -3, 8), (2, 3, 4)]
    rgb, mask = instance_view(im, 0, 8)
    vis = torch.zeros(8, 8, dtype=torch.bool)
    vis[:, 3:] = True  # columns 0-2 lie off the canvas
    vis[0:4, 6:8] = False  # b (nearer) covers canvas rows 2-5, columns 3-6: render columns 6-7 there
    assert mask[0].bool().equal(vis)
    assert torch.equal(rgb[:, vis], a[:3][:, vis]) and (rgb[:, ~vis] == 1).all()
    assert im.truth == ["truncated", "clean"]
    rgb, mask = instance_view(im, 0, 4)  # resized: the mask is the visible fraction of each 2×2 cell
    assert mask.shape == (1, 4, 4) and torch.allclose(mask[0], F.avg_pool2d(vis[None].float(), 2)[0])


@pytest.mark.parametrize("curated", [False, True])
def test_pool_single_views_come_from_each_objects_one_view(tmp_path, curated):
    """Set B from the clutter pool: every instance is a household training object seen through its one allowed view
    (its camera); only that view is readable; curation keeps a subset of the pool, fewer occluded ones."""
    from fewview.train.data import PoolSingleViewSource, SingleViewSource

    root = _mixed_root(tmp_path)
    single = SingleViewSource(root, "train", "household")
    pool = PoolSingleViewSource(root, "train", images=12, curated=curated, depth="renderer")
    assert len(pool) > 0 and set(pool.ids) <= set(single.ids)
    for s in range(len(pool)):
        k = single.ids.index(pool.ids[s])
        assert torch.equal(pool.c2w[s, 0], single.c2w[k, 0]) and pool.view[s] == single.view[k]
    img, msk, cams = pool.views(0, [0])
    assert img.shape == (1, 3, 32, 32) and msk.shape == (1, 1, 32, 32)
    with pytest.raises(IndexError):
        pool.views(0, [1])
    everything = PoolSingleViewSource(root, "train", images=12, curated=False)
    assert len(pool) <= len(everything)
    if curated:
        assert pool.truth.count("clean") / len(pool) >= everything.truth.count("clean") / len(everything)


def test_lrm_self_trains_on_the_curated_pool(tmp_path):
    """``single_view_source="pool-curated"`` routes set B through the curated clutter pool; a training step reads it."""
    from fewview.models.lrm import LRM, LRMConfig
    from fewview.train import TrainConfig
    from fewview.train.data import PoolSingleViewSource
    from fewview.train.trainer import make_source

    root = _mixed_root(tmp_path)
    model = LRM(LRMConfig(**TINY_LRM, self_training=True, single_view_source="pool-curated", pool_images=8,
                          pool_depth="renderer"))  # fmt: skip
    tc = TrainConfig(data=str(root), steps=1, batch_size=2, context_min=1, context_max=1)
    source = make_source(tc, "train", self_training=model.self_training_groups)
    assert isinstance(source.single_view, PoolSingleViewSource)
    loss, logs = model(_one_batch(source, tc))
    assert torch.isfinite(loss) and logs["cycle_mse"] > 0 and logs["sv_mse"] > 0
