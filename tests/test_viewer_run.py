"""What `fewview view` reads from a run folder, and its camera conversions (no browser needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fewview.methods.fit_config import FitConfig
from fewview.methods.protocol_run import run_protocol
from fewview.viewer import RunViewer, ViewerError, ViewerOptions, frustum_pose, read_run, viewer_camera

from .helpers import free_port, make_cams

EXAMPLE = Path(__file__).resolve().parents[1] / "fewview" / "assets" / "example_object"


@pytest.fixture(scope="module")
def gs_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "gs"
    cfg = FitConfig(representation="gaussians", steps=30, w_silhouette=1.0, gs_hull_prune=True)
    run_protocol(EXAMPLE, "blender-split", out, cfg, progress=False, lpips=False)
    return out


def test_frustum_pose_and_viewer_camera_round_trip():
    cams = make_cams(n=4, h=40, w=48, f=50.0)
    for i in range(len(cams)):
        wxyz, pos, fov, aspect = frustum_pose(cams, i)
        back = viewer_camera(pos, wxyz, fov, aspect, 40)
        assert torch.allclose(back.c2w[0].double(), cams.c2w[i].double(), atol=1e-5)
        assert abs(float(back.fy[0]) - float(cams.fy[i])) < 1e-4 and tuple(back.size[0].tolist()) == (40, 48)


def test_reads_what_a_run_holds(gs_run, tmp_path):
    run = read_run(gs_run)
    assert run.kind == "gaussians" and len(run.input_cameras) == 3
    assert all(img is not None and img.ndim == 3 for img in run.input_images)
    assert run.eval_cameras is not None and len(run.eval_cameras) == len(run.metrics["evaluation_views"])
    assert run.meshes == [] and run.point_clouds == []
    # a 3DGS point_cloud.ply is the Gaussians (shown from the checkpoint), meshes and points are listed
    import trimesh

    copy = tmp_path / "copy"
    shutil.copytree(gs_run, copy)
    trimesh.creation.box().export(copy / "mesh.ply")
    trimesh.PointCloud(np.random.default_rng(0).normal(size=(50, 3))).export(copy / "points.ply")
    (copy / "point_cloud.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nproperty float f_dc_0\n")
    run = read_run(copy)
    assert [p.name for p in run.meshes] == ["mesh.ply"] and [p.name for p in run.point_clouds] == ["points.ply"]


def test_refuses_folders_with_nothing_to_show(tmp_path):
    with pytest.raises(ViewerError, match="not found"):
        read_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ViewerError, match="nothing to show"):
        read_run(tmp_path / "empty")


def test_sample_switcher_swaps_the_scene(gs_run, tmp_path):
    pytest.importorskip("viser", reason="the [viewer] extra (viser) is not installed")
    run = tmp_path / "sampled"
    run.mkdir()
    for k in ("a", "b"):
        cfg = FitConfig(representation="gaussians", steps=10 if k == "a" else 20, w_silhouette=1.0, seed=ord(k))
        run_protocol(EXAMPLE, "blender-split", run / "samples" / k, cfg, progress=False, lpips=False)
    shutil.copy(run / "samples" / "a" / "config.json", run / "config.json")
    viewer = RunViewer(run, ViewerOptions(port=free_port()))
    assert viewer.run.kind == "gaussians" and list(viewer.run.samples) == ["a", "b"] and viewer.sample == "a"
    viewer.start()
    try:
        first = viewer.state().model.means.clone()
        viewer.select_sample("b")
        assert viewer.sample == "b"
        assert viewer.state().model.means.shape != first.shape or not torch.equal(viewer.state().model.means, first)
        with pytest.raises(ViewerError, match="no sample"):
            viewer.select_sample("c")
    finally:
        viewer.stop()


def test_cli_fails_in_one_line_on_a_busy_port(gs_run, capsys):
    pytest.importorskip("viser", reason="the [viewer] extra (viser) is not installed")
    import socket

    from fewview.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["view", str(gs_run), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --port" in err[0]
