"""`fewview poses`: cameras for a folder of photos with pycolmap, against a rendered scene's true cameras."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fewview.data import load_scene
from fewview.data.poses import PosesError, PosesOptions, estimate_poses, required_registered

from .helpers import save_png, similarity_align, textured_box_scene

pycolmap = pytest.importorskip("pycolmap", reason="the [colmap] extra (pycolmap) is not installed")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    cams, rgb, masks = textured_box_scene(n=20)
    (root / "photos").mkdir()
    (root / "masks").mkdir()
    for i in range(len(rgb)):
        save_png(root / "photos" / f"IMG_{i:03d}.png", rgb[i])
        save_png(root / "masks" / f"IMG_{i:03d}.png", masks[i])
    return root, cams


@pytest.fixture(scope="module")
def posed(photos):
    root, cams = photos
    out = root / "scene"
    record = estimate_poses(root / "photos", out, masks=root / "masks", progress=False)
    return out, record, cams


def test_recovers_cameras_up_to_similarity(posed):
    out, record, gt = posed
    assert record["dropped"] == [] and len(record["posed"]) == 20
    scene = load_scene(out)
    assert len(scene) == 20
    idx = [int(f.rsplit("IMG_", 1)[1][:3]) for f in scene.frames]
    gt = gt[idx]
    est_c, gt_c = scene.cameras.centers.double().numpy(), gt.centers.double().numpy()
    s, r, t = similarity_align(est_c, gt_c)
    spread = np.linalg.norm(gt_c - gt_c.mean(0), axis=1).mean()
    # camera centres within 1 % of the rig's size, orientations within 0.5 deg, focal within 1 %
    assert np.linalg.norm(s * est_c @ r.T + t - gt_c, axis=1).max() < 0.01 * spread
    r_est, r_gt = scene.cameras.c2w[:, :3, :3].double().numpy(), gt.c2w[:, :3, :3].double().numpy()
    for a, b in zip(r_est, r_gt, strict=True):
        cos = (np.trace((r @ a).T @ b) - 1) / 2
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))) < 0.5
    f_est = scene.cameras.K[:, 0, 0].double().numpy()
    assert np.allclose(f_est, gt.K[0, 0, 0].item(), rtol=0.01)


def test_masks_are_carried_and_undistorted_like_their_photos(posed):
    out, _, _ = posed
    scene = load_scene(out)
    assert scene.masks is not None and scene.masks.shape[-2:] == scene.images.shape[-2:]
    # the masks cover exactly the non-white pixels of the undistorted photos (object and floor on white)
    not_white = scene.images.min(1, keepdim=True).values < 0.97
    covered = scene.masks > 0.5
    agree = (not_white == covered).float().mean().item()
    assert agree > 0.99


def test_undistorts_a_mask_through_the_cameras():
    """A disc drawn in normalised coordinates through a strongly distorted camera lands in the undistorted
    pinhole camera where the analytic unprojection says."""
    from fewview.data.poses import _undistort_mask

    src = pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", 200.0, 160, 120)
    src.params = np.array([200.0, 80.0, 60.0, -0.25])
    dst = pycolmap.Camera.create_from_model_name(2, "PINHOLE", 180.0, 150, 110)
    dst.params = np.array([180.0, 180.0, 75.0, 55.0])

    def disc(cam):
        u, v = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
        xy = cam.cam_from_img(np.stack([u.ravel(), v.ravel()], 1).astype(np.float64))
        return (np.linalg.norm(xy - [0.1, -0.05], axis=1) < 0.25).reshape(cam.height, cam.width)

    got = _undistort_mask(disc(src).astype(np.float32), src, dst) > 0.5
    want = disc(dst)
    assert want.sum() > 500
    assert (got != want).sum() <= 0.02 * want.sum()  # only boundary pixels may differ
    identity = _undistort_mask(disc(src).astype(np.float32), src, src) > 0.5
    assert (identity != disc(src)).sum() == 0


def test_unrelated_photos_fail_in_one_line_and_write_nothing(tmp_path, photos):
    root, _ = photos
    (tmp_path / "two").mkdir()
    rng = np.random.default_rng(3)
    save_png(tmp_path / "two" / "a.png", (rng.uniform(0, 255, (240, 320, 3))).astype(np.uint8))
    save_png(tmp_path / "two" / "b.png", (rng.uniform(0, 255, (240, 320, 3))).astype(np.uint8))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(PosesError) as e:
        estimate_poses(tmp_path / "two", tmp_path / "scene", progress=False)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no scene, no partial folder
    r = subprocess.run([sys.executable, "-m", "fewview", "poses", str(tmp_path / "two"), "--out",
                        str(tmp_path / "scene")], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_refuses_bad_input_in_one_line(tmp_path, posed):
    out, _, _ = posed
    with pytest.raises(PosesError, match="already exists"):
        estimate_poses(out / "images", out, progress=False)
    (tmp_path / "one").mkdir()
    save_png(tmp_path / "one" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(PosesError, match="need at least 2"):
        estimate_poses(tmp_path / "one", tmp_path / "x", progress=False)
    with pytest.raises(PosesError, match="camera model 'FOO'"):
        estimate_poses(out / "images", tmp_path / "x", options=PosesOptions(camera_model="FOO"), progress=False)
    (tmp_path / "one" / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(PosesError, match="b.jpg: cannot read"):
        estimate_poses(tmp_path / "one", tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_registration_threshold():
    assert [required_registered(n, PosesOptions()) for n in (2, 3, 4, 5, 10, 40)] == [2, 3, 4, 3, 5, 20]
    assert required_registered(10, PosesOptions(min_registered=8)) == 8


def test_the_posed_scene_works_with_info_and_fit(posed, tmp_path, capsys):
    from fewview.cli import main

    out, _, _ = posed
    assert main(["info", str(out)]) == 0
    assert "20 views" in capsys.readouterr().out
    run = tmp_path / "fit"
    assert main(["fit", str(out), "--views", "0,7,14", "--steps", "5", "--out", str(run), "--quiet",
                 "--w-silhouette", "1"]) == 0  # fmt: skip
    assert (run / "checkpoint" / "meta.json").is_file()
