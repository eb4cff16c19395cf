"""Readers: real shared data where present, and fixtures written here in each real on-disk format."""

from pathlib import Path

import pytest
import torch

from fewview.cameras import nearest_point_to_axes
from fewview.data import (
    BoxCrop,
    detect_format,
    list_sequences,
    load_blender,
    load_co3d_sequence,
    load_colmap,
    load_dtu,
    load_llff,
    load_scene,
    read_colmap_model,
)
from fewview.data.co3d import crop_box

from .helpers import (
    SPHERE_CENTER,
    iou,
    make_cams,
    sphere_mask,
    write_blender,
    write_co3d,
    write_colmap,
    write_dtu,
    write_llff,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "lego").exists(), reason="shared/data not beside this checkout")


def mask_at(masks: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Mask values (B,) at (B, 2) continuous pixel coordinates."""
    x, y = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    h, w = masks.shape[-2:]
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    vals = torch.zeros(len(uv))
    vals[inside] = masks[torch.arange(len(uv))[inside], 0, y[inside], x[inside]]
    return vals


@needs_shared
@pytest.mark.parametrize("split,n", [("train", 100), ("val", 100), ("test", 200)])
def test_lego_cameras_and_masks(split, n):
    s = load_blender(SHARED / "lego", split)
    assert len(s) == n and s.images.shape == (n, 3, 128, 128) and s.background == "alpha"
    torch.testing.assert_close(s.cameras.centers.norm(dim=-1), torch.full((n,), 4.031), atol=5e-4, rtol=0)
    uv, z = s.cameras.project(torch.zeros(1, 3))
    assert bool((z > 0).all())
    assert bool((mask_at(s.masks, uv[:, 0]) > 0.5).all()), "origin must project inside the alpha mask in every view"


@needs_shared
def test_lego_downscale_keeps_geometry():
    full = load_blender(SHARED / "lego", "test")
    half = load_blender(SHARED / "lego", "test", downscale=2)
    assert half.images.shape[-2:] == (64, 64)
    torch.testing.assert_close(half.cameras.fx, full.cameras.fx / 2)
    uv, _ = half.cameras.project(torch.zeros(1, 3))
    assert bool((mask_at(half.masks, uv[:, 0]) > 0.5).all())


@needs_shared
def test_mary_rose_axes_point_inside_masks():
    s = load_llff(SHARED / "mary_rose")
    assert len(s) == 69 and s.masks is not None and s.near_far.shape == (69, 2)
    p = nearest_point_to_axes(s.cameras).float()
    uv, z = s.cameras.project(p[None])
    assert bool((z > 0).all())
    assert bool((mask_at(s.masks, uv[:, 0]) > 0.5).all()), "the point nearest all axes must be inside every mask"


def check_sphere(scene, masks=None, min_iou=0.97):
    """The loaded cameras re-render the sphere that the stored images show."""
    rendered = sphere_mask(scene.cameras.to(torch.float64))
    stored = (masks if masks is not None else scene.masks)[:, 0] > 0.5
    for i in range(len(scene)):
        assert iou(rendered[i], stored[i]) >= min_iou, f"view {i}"


def test_blender_fixture(tmp_path):
    cams = make_cams()
    # NeRF-synthetic has one camera_angle_x and a centred principal point.
    from fewview.cameras import Cameras, intrinsics_matrix

    centred = Cameras(cams.c2w, intrinsics_matrix(50.0, 50.0, 24.0, 20.0).expand(len(cams), 3, 3), cams.size)
    write_blender(tmp_path, centred, "train")
    s = load_blender(tmp_path, "train")
    assert detect_format(tmp_path) == "blender"
    torch.testing.assert_close(s.cameras.c2w.double(), centred.c2w, atol=1e-6, rtol=0)
    check_sphere(s)


def test_nerfstudio_fixture_per_frame_intrinsics(tmp_path):
    cams = make_cams()
    write_blender(tmp_path, cams, nerfstudio=True)
    s = load_scene(tmp_path, split=None)
    torch.testing.assert_close(s.cameras.K.double(), cams.K, atol=1e-5, rtol=0)
    check_sphere(s)


def test_llff_fixture(tmp_path):
    cams = make_cams()
    from fewview.cameras import Cameras, intrinsics_matrix

    llff_cams = Cameras(cams.c2w, intrinsics_matrix(50.0, 50.0, 24.0, 20.0).expand(len(cams), 3, 3), cams.size)
    write_llff(tmp_path, llff_cams)
    s = load_llff(tmp_path)
    torch.testing.assert_close(s.cameras.c2w.double(), llff_cams.c2w, atol=1e-6, rtol=0)
    check_sphere(s)
    s2 = load_llff(tmp_path, downscale=2)
    assert s2.images.shape[-2:] == (20, 24)
    check_sphere(s2, min_iou=0.85)


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_fixture(tmp_path, binary):
    cams = make_cams()
    write_colmap(tmp_path, cams, binary=binary)
    model = read_colmap_model(tmp_path / "sparse" / "0")
    assert len(model.images) == len(cams) and model.points.shape == (20, 3)
    s = load_colmap(tmp_path)
    assert detect_format(tmp_path) == "colmap"
    torch.testing.assert_close(s.cameras.c2w.double(), cams.c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(s.cameras.K.double(), cams.K, atol=1e-5, rtol=0)
    assert s.bounds.shape == (2, 3)
    # Reading the sphere back from the RGB images (orange where the sphere is).
    check_sphere(s, masks=(s.images[:, :1] > 0.5).float())


def test_dtu_fixture(tmp_path):
    cams = make_cams()
    # The fixture's cameras live in a world frame; DTU stores them with scale_mat to the normalised frame.
    sm = write_dtu(tmp_path, cams)
    s = load_dtu(tmp_path)
    assert detect_format(tmp_path) == "dtu"
    # Loaded cameras are in the normalised frame: x_world = sm @ x_norm.
    norm_center = torch.linalg.solve(sm, torch.cat([SPHERE_CENTER, torch.ones(1, dtype=torch.float64)]))[:3]
    world = (sm[:3, :3] @ s.cameras.centers.double().T).T + sm[:3, 3]
    torch.testing.assert_close(world, cams.centers, atol=1e-5, rtol=0)
    rendered = sphere_mask(s.cameras.to(torch.float64), center=norm_center, radius=0.6 / sm[0, 0])
    for i in range(len(s)):
        assert iou(rendered[i], s.masks[i, 0] > 0.5) > 0.97
    assert s.near_far.shape == (len(cams), 2)


@pytest.mark.parametrize("fmt", ["ndc_isotropic", "ndc_norm_image_bounds"])
def test_co3d_fixture_full_frames(tmp_path, fmt):
    cams = make_cams(h=40, w=56)
    write_co3d(tmp_path, cams, fmt=fmt)
    assert list_sequences(tmp_path, "hydrant", "fewview_dev", "test") == ["42_1234_5678"]
    s = load_co3d_sequence(tmp_path, "hydrant", "42_1234_5678", box_crop=None, load_depth=True)
    assert s.meta["frame_numbers"] == list(range(1, len(cams) + 1)), "frames sorted by timestamp"
    assert s.meta["viewpoint_quality_score"] == 0.9
    torch.testing.assert_close(s.cameras.c2w.double(), cams.c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(s.cameras.K.double(), cams.K, atol=1e-4, rtol=0)
    torch.testing.assert_close(s.depths, torch.full_like(s.depths, 5.0))  # float16 bits x scale_adjustment
    check_sphere(s)


def test_co3d_box_crop(tmp_path):
    cams = make_cams(h=40, w=56, f=40.0)
    write_co3d(tmp_path, cams)
    crop = BoxCrop(image_size=32)
    s = load_co3d_sequence(tmp_path, "hydrant", "42_1234_5678", box_crop=crop)
    assert s.images.shape[-2:] == (32, 32) and s.cameras.size.tolist() == [[32, 32]] * len(cams)
    # The cropped/resized cameras still see the sphere where the cropped masks are; padding is invalid.
    rendered = sphere_mask(s.cameras.to(torch.float64))
    for i in range(len(s)):
        valid = s.valid[i, 0] > 0.5
        assert iou(rendered[i] & valid, (s.masks[i, 0] > 0.5) & valid) > 0.9
    # The crop box is the mask's bounding box grown by 30 % context.
    m = sphere_mask(cams)[0].float().numpy()
    x0, y0, x1, y1 = crop_box(m, crop)
    ys, xs = m.nonzero()
    bw, bh = xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()
    assert abs((x1 - x0) - min(bw * 1.3, 56)) <= 1.5 and abs((y1 - y0) - min(bh * 1.3, 40)) <= 1.5
