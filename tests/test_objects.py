"""fewview-objects: determinism, geometric and photometric consistency, storage round trips."""

import hashlib
import json

import numpy as np
import pytest
import torch
import trimesh

from fewview.cli import main
from fewview.data import DataError, load_blender
from fewview.metrics import nearest_distances
from fewview.objects.builder import (
    ObjectsConfig,
    build,
    generate,
    held_out_views,
    load_object,
    recipe,
    render_object,
    splits,
    truncated_views,
)
from fewview.objects.shapes import CATEGORIES
from fewview.train import ObjectsSource

from .helpers import depth_points

SMALL = ObjectsConfig(objects=9, views=6, res=48, shard_size=4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("objects")
    build(SMALL, out, progress=False)
    return out


def sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_same_seed_byte_identical_other_seed_differs(dataset, tmp_path):
    build(SMALL, tmp_path / "again", progress=False)
    for p in sorted(dataset.glob("shard_*.npz")):
        assert sha(p) == sha(tmp_path / "again" / p.name)
    other = ObjectsConfig(**{**SMALL.__dict__, "seed": 1, "objects": 4})
    build(other, tmp_path / "other", progress=False)
    assert sha(tmp_path / "other" / "shard_00000.npz") != sha(dataset / "shard_00000.npz")
    card = json.loads((dataset / "card.json").read_text())
    assert [s["sha256"] for s in card["shards"]] == [sha(dataset / s["file"]) for s in card["shards"]]
    assert sum(card["counts"].values()) == 9 and (dataset / "contact_sheet.png").exists()


def test_depth_unprojects_onto_the_mesh_surface():
    cfg = ObjectsConfig(objects=len(CATEGORIES), views=4, res=64)
    for i in range(len(CATEGORIES)):  # one object of every category
        obj, cams = generate(cfg, i)
        rgba, depth = render_object(obj, cams)
        pts = depth_points(rgba, depth, cams)
        surface = torch.from_numpy(trimesh.sample.sample_surface_even(obj.mesh, 60000, seed=0)[0])
        size = float(np.linalg.norm(obj.mesh.extents))
        err = nearest_distances(pts, surface).mean() / size
        assert err < 0.005, (obj.category, float(err))


def test_masks_equal_depth_validity_and_views_agree_in_colour():
    cfg = ObjectsConfig(objects=2, views=12, res=96)
    obj, cams = generate(cfg, 1)
    rgba, depth = render_object(obj, cams)
    assert np.array_equal(rgba[..., 3] > 0, depth > 0)
    # A surface point fully covered in view a and visible in view b has the same colour in both.
    diffs = []
    for a, b in ((0, 1), (3, 4), (7, 8)):
        full = (rgba[a, ..., 3] == 255) & (depth[a] > 0)
        ys, xs = np.nonzero(full)
        uv = torch.tensor(np.stack([xs + 0.5, ys + 0.5], 1), dtype=torch.float64)[None]
        X = cams[a].to(torch.float64).unproject(uv, torch.tensor(depth[a][full], dtype=torch.float64)[None])
        uvb, zb = cams[b].to(torch.float64).project(X[0])
        xb, yb = uvb[0, :, 0].long().numpy(), uvb[0, :, 1].long().numpy()
        ok = (xb >= 0) & (xb < 96) & (yb >= 0) & (yb < 96)
        xb, yb, za = xb[ok], yb[ok], zb[0].numpy()[ok]
        visible = (np.abs(depth[b][yb, xb] - za) < 0.01) & (rgba[b][yb, xb, 3] == 255)
        ca = rgba[a][ys[ok][visible], xs[ok][visible], :3].astype(float)
        cb = rgba[b][yb[visible], xb[visible], :3].astype(float)
        diffs.append(np.median(np.abs(ca - cb)) / 255)
    assert max(diffs) < 0.03, diffs


def test_truncation_is_reported():
    obj, cams = generate(ObjectsConfig(objects=1, views=4, fov_deg=15.0), 0)
    assert truncated_views(obj, cams) == [0, 1, 2, 3]
    obj, cams = generate(ObjectsConfig(objects=1, views=4), 0)
    assert truncated_views(obj, cams) == []


def test_splits_by_object_and_balanced():
    cfg = ObjectsConfig(objects=70)
    sp = splits(cfg)
    assert sorted(sp["train"] + sp["val"] + sp["test"]) == list(range(70))
    for name in ("val", "test"):
        cats = [i % len(CATEGORIES) for i in sp[name]]
        assert sorted(cats) == list(range(len(CATEGORIES)))  # one of each category
    assert splits(ObjectsConfig(objects=70, seed=1)) != sp


def test_held_out_views_regenerate_the_stored_test_objects(tmp_path):
    cfg = ObjectsConfig(objects=16, views=4, res=32, shard_size=8, split=(0.5, 0.0, 0.5))
    build(cfg, tmp_path, progress=False)
    assert recipe(tmp_path) == cfg
    test = splits(cfg)["test"]
    got = list(held_out_views(cfg, 2, exclude=test[:1], every=2))
    assert [g[0] for g in got] == test[1:3]
    src = ObjectsSource(tmp_path, "test", depth=True)
    for oi, img, cams, depth in got:
        s = src.ids.index(oi)
        ref, msk, ref_cams = src.views(s, [0, 2])
        torch.testing.assert_close(img, ref * msk + (1 - msk), atol=0.5 / 255, rtol=0)
        torch.testing.assert_close(cams.c2w.float(), ref_cams.c2w.float())
        torch.testing.assert_close(depth, src.depths(s, [0, 2]), atol=1e-2, rtol=1e-3)


def test_reader_and_blender_export_round_trip(dataset, tmp_path):
    s = load_object(dataset, 5)
    assert len(s) == 6 and s.background == "alpha" and s.depths.shape == (6, 1, 48, 48)
    assert s.meta["category"] == SMALL.categories[5 % len(SMALL.categories)]
    assert main(["data", "objects", "--out", str(dataset), "--export", "5", "--export-to", str(tmp_path / "b")]) == 0
    b = load_blender(tmp_path / "b", "train")
    torch.testing.assert_close(b.cameras.c2w, s.cameras.c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.cameras.K, s.cameras.K, atol=1e-3, rtol=0)
    torch.testing.assert_close(b.masks, s.masks, atol=1 / 255, rtol=0)
    with pytest.raises(DataError, match="object 99 is not in this dataset"):
        load_object(dataset, 99)


def test_cli_builds(tmp_path, capsys):
    args = [
        "data",
        "objects",
        "--out",
        str(tmp_path / "d"),
        "--recipe",
        "parametric",
        "--objects",
        "3",
        "--views",
        "4",
        "--res",
        "32",
        "--quiet",
    ]
    assert main(args) == 0
    assert "wrote 1 shards" in capsys.readouterr().out
    assert (tmp_path / "d" / "card.json").exists()


def test_generic_category_uses_the_pybullet_wheel_meshes(monkeypatch):
    from fewview.objects.shapes import MissingMeshesError, make_object, pybullet_mesh_files

    files = pybullet_mesh_files()
    assert sum("random_urdfs" in f.parts for f in files) == 1000 and len(files) > 1000
    obj = make_object("generic", np.random.default_rng([0, 3]))
    assert obj.source and len(obj.mesh.faces) >= 12
    assert np.linalg.norm(obj.mesh.vertices, axis=1).max() <= 0.95 + 1e-6
    monkeypatch.setitem(__import__("sys").modules, "pybullet_data", None)  # as if pybullet were not installed
    with pytest.raises(MissingMeshesError, match="pip install pybullet"):
        make_object("generic", np.random.default_rng(0))
