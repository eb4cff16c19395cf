"""Cameras: round trips of every converter, cross-checks by each convention's own projection formula."""

import math

import pytest
import torch

from fewview.cameras import (
    CameraError,
    Cameras,
    camera_rays,
    fit_circle,
    intrinsics_matrix,
    look_at,
    nearest_point_to_axes,
    orbit,
    relative_to,
    sparsefusion_trajectory,
)
from fewview.cameras import convert as cv


@pytest.fixture(autouse=True)
def float64_default():
    """These tests compare against formulas to 1e-9, so build everything in float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def random_rotations(n, gen):
    q = torch.randn(n, 4, generator=gen)
    return cv.quat_to_rotmat(q / q.norm(dim=-1, keepdim=True))


@pytest.fixture
def cams():
    g = torch.Generator().manual_seed(0)
    n = 7
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, :3] = random_rotations(n, g)
    c2w[:, :3, 3] = torch.randn(n, 3, generator=g) * 3
    K = intrinsics_matrix(100 + 20 * torch.rand(n, generator=g), 110 + 5 * torch.rand(n, generator=g), 31.7, 22.2)
    return Cameras(c2w, K, torch.tensor([48, 64]))


def points_in_front(cams, gen, p=20):
    """World points at positive depth in every camera: for (B, P, 3)."""
    uv = torch.rand(len(cams), p, 2, generator=gen) * torch.tensor([64.0, 48.0])
    depth = 1 + 4 * torch.rand(len(cams), p, generator=gen)
    return cams.unproject(uv, depth), uv, depth


def test_project_unproject_and_rays(cams):
    g = torch.Generator().manual_seed(1)
    X, uv, depth = points_in_front(cams, g)
    uv2, z2 = cams.project(X)
    torch.testing.assert_close(uv2, uv, atol=1e-9, rtol=0)
    torch.testing.assert_close(z2, depth, atol=1e-9, rtol=0)
    # The ray through pixel (i, j)'s centre passes through the point that projects to (j+.5, i+.5).
    rays = camera_rays(cams, dtype=torch.float64)
    i, j = 17, 40
    o, d = rays.origins[:, i, j], rays.directions[:, i, j]
    uvc = torch.tensor([[j + 0.5, i + 0.5]]).expand(len(cams), 1, 2)
    Xc = cams.unproject(uvc, torch.full((len(cams), 1), 2.5))[:, 0]
    t = ((Xc - o) * d).sum(-1)
    torch.testing.assert_close(o + t[:, None] * d, Xc, atol=1e-9, rtol=0)
    # z_per_t converts ray distance to z-depth.
    torch.testing.assert_close(t * rays.z_per_t[:, i, j], torch.full((len(cams),), 2.5), atol=1e-9, rtol=0)


def test_opengl_round_trip_and_formula(cams):
    gl = cv.to_opengl(cams)
    back = cv.from_opengl(gl, cams.K, 48, 64)
    torch.testing.assert_close(back.c2w, cams.c2w, atol=1e-12, rtol=0)
    torch.testing.assert_close(cv.to_opengl(back), gl, atol=1e-12, rtol=0)
    X, uv, _ = points_in_front(cams, torch.Generator().manual_seed(2))
    # OpenGL formula: camera looks down -z, image y grows downwards as camera y decreases.
    pc = (X - gl[:, None, :3, 3]) @ gl[:, :3, :3]
    K = cams.K
    u = K[:, None, 0, 2] + K[:, None, 0, 0] * pc[..., 0] / -pc[..., 2]
    v = K[:, None, 1, 2] - K[:, None, 1, 1] * pc[..., 1] / -pc[..., 2]
    torch.testing.assert_close(torch.stack([u, v], -1), uv, atol=1e-9, rtol=0)


def test_blender_fov():
    c = cv.from_blender_fov(torch.eye(4), 0.6911112070083618, 128, 128)
    assert abs(float(c.fx[0]) - 177.777) < 1e-2
    assert float(c.cx[0]) == 64.0


def test_opencv_round_trip_and_formula(cams):
    R, t, K = cv.to_opencv(cams)
    back = cv.from_opencv(R, t, K, 48, 64)
    torch.testing.assert_close(back.c2w, cams.c2w, atol=1e-12, rtol=0)
    torch.testing.assert_close(back.K, cams.K, atol=1e-12, rtol=0)
    R2, t2, K2 = cv.to_opencv(back)
    torch.testing.assert_close(R2, R, atol=1e-12, rtol=0)
    torch.testing.assert_close(t2, t, atol=1e-12, rtol=0)
    X, uv, _ = points_in_front(cams, torch.Generator().manual_seed(3))
    pc = X @ R.transpose(1, 2) + t[:, None]
    pix = pc @ K.transpose(1, 2)
    # OpenCV puts pixel centres at integers: its coordinates are ours minus 0.5.
    torch.testing.assert_close(pix[..., :2] / pix[..., 2:], uv - 0.5, atol=1e-9, rtol=0)


def test_llff_round_trip_and_formula():
    g = torch.Generator().manual_seed(4)
    n = 5
    R = random_rotations(n, g)
    pb = torch.zeros(n, 17)
    block = torch.zeros(n, 3, 5)
    block[:, :, :3] = R  # columns: down, right, back (a right-handed frame)
    block[:, :, 3] = torch.randn(n, 3, generator=g)
    block[:, :, 4] = torch.tensor([40.0, 60.0, 55.5])
    pb[:, :15] = block.reshape(n, 15)
    pb[:, 15:] = torch.tensor([0.5, 9.0])
    cams, nf = cv.from_llff(pb)
    torch.testing.assert_close(cv.to_llff(cams, nf), pb, atol=1e-12, rtol=0)
    X, uv, _ = points_in_front(Cameras(cams.c2w, cams.K, cams.size), g)
    local = (X - block[:, None, :, 3]) @ block[:, :, :3]  # (down, right, back) coordinates
    u = 30.0 + 55.5 * local[..., 1] / -local[..., 2]
    v = 20.0 + 55.5 * local[..., 0] / -local[..., 2]
    torch.testing.assert_close(torch.stack([u, v], -1), cams.project(X)[0], atol=1e-9, rtol=0)


def test_colmap_round_trip_and_formula(cams):
    q, t, K = cv.to_colmap(cams)
    assert bool((q[:, 0] >= 0).all())
    back = cv.from_colmap(q, t, K, 48, 64)
    torch.testing.assert_close(back.c2w, cams.c2w, atol=1e-12, rtol=0)
    q2, t2, _ = cv.to_colmap(back)
    torch.testing.assert_close(q2, q, atol=1e-12, rtol=0)
    torch.testing.assert_close(t2, t, atol=1e-12, rtol=0)
    X, uv, _ = points_in_front(cams, torch.Generator().manual_seed(5))
    # COLMAP: x_cam = R(q) X + t with R from the (w, x, y, z) quaternion formula written out here.
    w, x, y, z = q.unbind(-1)
    Rq = torch.stack(
        [
            torch.stack([w**2 + x**2 - y**2 - z**2, 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), w**2 - x**2 + y**2 - z**2, 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), w**2 - x**2 - y**2 + z**2], -1),
        ],
        1,
    )
    pc = X @ Rq.transpose(1, 2) + t[:, None]
    pix = pc @ K.transpose(1, 2)
    torch.testing.assert_close(pix[..., :2] / pix[..., 2:], uv, atol=1e-9, rtol=0)


def test_quaternion_round_trip_covers_all_branches():
    g = torch.Generator().manual_seed(6)
    R = random_rotations(500, g)
    # include 180-degree rotations, where trace = -1
    R = torch.cat([R, torch.diag_embed(torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1]]))])
    torch.testing.assert_close(cv.quat_to_rotmat(cv.rotmat_to_quat(R)), R, atol=1e-12, rtol=0)


@pytest.mark.parametrize("hw", [(48, 64), (64, 48)])
def test_pytorch3d_round_trip_and_formula(cams, hw):
    cams = Cameras(cams.c2w, cams.K, torch.tensor(hw))
    R, T, f, p, size = cv.to_pytorch3d(cams)
    back = cv.from_pytorch3d(R, T, f, p, size)
    torch.testing.assert_close(back.c2w, cams.c2w, atol=1e-12, rtol=0)
    torch.testing.assert_close(back.K, cams.K, atol=1e-12, rtol=0)
    R2, T2, f2, p2, _ = cv.to_pytorch3d(back)
    for a, b in ((R2, R), (T2, T), (f2, f), (p2, p)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    X, _, _ = points_in_front(cams, torch.Generator().manual_seed(7))
    # PyTorch3D: row vectors, NDC with +x left / +y up, scaled by min(H, W) / 2.
    Xc = X @ R + T[:, None]
    x_ndc = f[:, None, 0] * Xc[..., 0] / Xc[..., 2] + p[:, None, 0]
    y_ndc = f[:, None, 1] * Xc[..., 1] / Xc[..., 2] + p[:, None, 1]
    s = min(hw) / 2
    u = hw[1] / 2 - s * x_ndc
    v = hw[0] / 2 - s * y_ndc
    torch.testing.assert_close(torch.stack([u, v], -1), cams.project(X)[0], atol=1e-9, rtol=0)


def test_dtu_round_trip_and_formula(cams):
    scale_mat = torch.eye(4)
    scale_mat[:3, :3] *= 2.5
    scale_mat[:3, 3] = torch.tensor([0.3, -1.0, 2.0])
    wm = cv.to_dtu(cams, scale_mat)
    back = cv.from_dtu(wm, scale_mat, 48, 64)
    torch.testing.assert_close(back.c2w, cams.c2w, atol=1e-9, rtol=0)
    torch.testing.assert_close(back.K, cams.K, atol=1e-9, rtol=0)
    torch.testing.assert_close(cv.to_dtu(back, scale_mat), wm, atol=1e-9, rtol=0)
    X, uv, _ = points_in_front(cams, torch.Generator().manual_seed(8))
    P = (wm @ scale_mat)[:, :3]
    x = torch.cat([X, torch.ones_like(X[..., :1])], -1) @ P.transpose(1, 2)
    torch.testing.assert_close(x[..., :2] / x[..., 2:] + 0.5, uv, atol=1e-8, rtol=0)
    # A projection matrix is defined up to scale, including negative scale.
    back2 = cv.from_dtu(-3.0 * wm, scale_mat, 48, 64)
    torch.testing.assert_close(back2.c2w, cams.c2w, atol=1e-9, rtol=0)


def test_every_path_projects_a_point_to_the_same_pixel(cams):
    """One world point, six conventions, one pixel."""
    X = cams.unproject(torch.tensor([[[20.25, 30.5]]]).expand(len(cams), 1, 2), torch.full((len(cams), 1), 3.0))
    uv = cams.project(X)[0]
    paths = [
        cv.from_opengl(cv.to_opengl(cams), cams.K, 48, 64),
        cv.from_opencv(*cv.to_opencv(cams), 48, 64),
        cv.from_colmap(*cv.to_colmap(cams), 48, 64),
        cv.from_pytorch3d(*cv.to_pytorch3d(cams)),
        cv.from_dtu(cv.to_dtu(cams), torch.eye(4), 48, 64),
    ]
    for c in paths:
        torch.testing.assert_close(c.project(X)[0], uv, atol=1e-8, rtol=0)
    torch.testing.assert_close(uv[:, 0], torch.tensor([[20.25, 30.5]]).expand(len(cams), 2), atol=1e-9, rtol=0)


def test_resize_and_crop_keep_points_on_the_same_content(cams):
    X, uv, _ = points_in_front(cams, torch.Generator().manual_seed(9))
    half = cams.resize(24, 32)
    torch.testing.assert_close(half.project(X)[0], uv / 2, atol=1e-9, rtol=0)
    assert half.height == 24 and half.width == 32
    crop = cams.crop(torch.tensor([10, 5, 50, 45]))
    torch.testing.assert_close(crop.project(X)[0], uv - torch.tensor([10.0, 5.0]), atol=1e-9, rtol=0)
    assert crop.size[0].tolist() == [40, 40]


def test_look_at_orbit_and_relative():
    c2w = look_at(torch.tensor([0.0, -4.0, 0.0]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(c2w[:3, 2], torch.tensor([0.0, 1.0, 0.0]))  # forward
    torch.testing.assert_close(c2w[:3, 1], torch.tensor([0.0, 0.0, -1.0]))  # image down = world -z
    with pytest.raises(CameraError, match="parallel"):
        look_at(torch.tensor([0.0, 0.0, 4.0]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    K = intrinsics_matrix(60, 60, 32, 32)
    o = orbit(12, 3.0, 30.0, K, 64, 64, center=(0.5, 0, 0))
    d = o.centers - torch.tensor([0.5, 0, 0])
    torch.testing.assert_close(d.norm(dim=-1), torch.full((12,), 3.0))
    torch.testing.assert_close(torch.rad2deg(torch.asin(d[:, 2] / 3.0)), torch.full((12,), 30.0))
    uv, _ = o.project(torch.tensor([[0.5, 0.0, 0.0]]))
    torch.testing.assert_close(uv[:, 0], torch.full((12, 2), 32.0))
    rel = relative_to(o, 3)
    torch.testing.assert_close(rel.c2w[3], torch.eye(4), atol=1e-12, rtol=0)
    # Relative poses between any two cameras are unchanged.
    torch.testing.assert_close(o.w2c[5] @ o.c2w[7], rel.w2c[5] @ rel.c2w[7], atol=1e-12, rtol=0)
    vox = relative_to(o, 3, rotation_only=True)
    torch.testing.assert_close(vox.c2w[3, :3, :3], torch.eye(3), atol=1e-12, rtol=0)
    torch.testing.assert_close(vox.centers.norm(dim=-1), o.centers.norm(dim=-1))


def tilted_circle_cams(n=32, center=(0.4, -0.3, 1.2), radius=2.7, target=(0.4, -0.3, 0.6)):
    normal = torch.tensor([0.3, -0.2, 1.0])
    normal = normal / normal.norm()
    u = torch.linalg.cross(normal, torch.tensor([1.0, 0, 0]))
    u = u / u.norm()
    v = torch.linalg.cross(normal, u)
    ang = torch.linspace(0, 2 * math.pi, n + 1)[:-1] + 0.3
    eye = torch.tensor(center) + radius * (torch.cos(ang)[:, None] * u + torch.sin(ang)[:, None] * v)
    c2w = look_at(eye, torch.tensor(target).expand_as(eye), normal.expand_as(eye))
    return Cameras(c2w, intrinsics_matrix(70, 70, 32, 32).expand(n, 3, 3), torch.tensor([64, 64])), normal


def test_fit_circle_recovers_known_tilted_circle():
    cams, normal = tilted_circle_cams()
    c = fit_circle(cams.centers, up_hint=normal)
    torch.testing.assert_close(c.center, torch.tensor([0.4, -0.3, 1.2]), atol=1e-9, rtol=0)
    torch.testing.assert_close(c.normal, normal, atol=1e-9, rtol=0)
    assert abs(c.radius - 2.7) < 1e-9
    # With noise, the estimate degrades gracefully.
    noisy = cams.centers + 0.01 * torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    c2 = fit_circle(noisy, up_hint=normal)
    assert abs(c2.radius - 2.7) < 0.02 and float((c2.center - c.center).norm()) < 0.02


def test_sparsefusion_trajectory():
    cams, normal = tilted_circle_cams(target=(0.4, -0.3, 0.6))
    tr = sparsefusion_trajectory(cams[::4], n=50)
    torch.testing.assert_close(nearest_point_to_axes(cams), torch.tensor([0.4, -0.3, 0.6]), atol=1e-9, rtol=0)
    torch.testing.assert_close(tr.centers[0], cams.centers[0], atol=1e-9, rtol=0)  # starts at camera 0
    torch.testing.assert_close((tr.centers - torch.tensor([0.4, -0.3, 1.2])).norm(dim=-1), torch.full((50,), 2.7))
    uv, z = tr.project(torch.tensor([[0.4, -0.3, 0.6]]))
    torch.testing.assert_close(uv[:, 0], torch.full((50, 2), 32.0), atol=1e-9, rtol=0)
    assert bool((z > 0).all())
    # Image "up" agrees with the plane normal's side.
    assert bool(((-tr.R[:, :, 1]) @ normal > 0).all())
    jit = sparsefusion_trajectory(cams, n=50, elevation_jitter=0.17, generator=torch.Generator().manual_seed(0))
    elev = torch.asin(((jit.centers - torch.tensor([0.4, -0.3, 1.2])) @ normal) / 2.7)
    assert float(elev.abs().max()) <= 0.17 + 1e-9 and float(elev.abs().max()) > 0.05


def test_validation_errors():
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, :3, :3] *= 1.5
    with pytest.raises(CameraError, match=r"cams\[1\]: rotation is not orthonormal"):
        Cameras(c2w, intrinsics_matrix(1, 1, 1, 1).expand(2, 3, 3), torch.tensor([2, 2])).validate("cams")
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[0, 0, 3] = float("nan")
    with pytest.raises(CameraError, match=r"cams\[0\].c2w: contains NaN or Inf"):
        Cameras(c2w, intrinsics_matrix(1, 1, 1, 1).expand(2, 3, 3), torch.tensor([2, 2])).validate("cams")
    reflect = torch.eye(4)
    reflect[0, 0] = -1
    with pytest.raises(CameraError, match="not orthonormal"):
        Cameras(reflect, intrinsics_matrix(1, 1, 1, 1), torch.tensor([2, 2])).validate()


def test_input_orbit_from_two_views():
    """SparseFusion's fitted circle needs >= 3 cameras; the inputs' orbit works from 2 (and 1): every camera looks
    at the object, and the path passes within 4 degrees (seen from the object) of each input, whose elevations
    differ by 6 degrees."""
    from fewview.cameras import CameraError, input_orbit, sparsefusion_trajectory

    target = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    K = intrinsics_matrix(60.0, 60.0, 32.0, 32.0)
    eyes = []
    for az, el in ((0.0, 20.0), (60.0, 26.0)):
        a, e = math.radians(az), math.radians(el)
        eyes.append(target + 3.0 * torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)]))
    eye = torch.stack(eyes)
    c2w = look_at(eye, target.expand(2, 3), torch.tensor([0.0, 0.0, 1.0]).expand(2, 3))
    cams = Cameras(c2w.float(), K.float().expand(2, 3, 3).clone(), torch.tensor([64, 64]))
    with pytest.raises(CameraError):
        sparsefusion_trajectory(cams, 50)
    for inputs in (cams, cams[:1]):
        path = input_orbit(inputs, 50, target=target)
        assert len(path) == 50
        d = path.centers.double() - target
        axis = path.c2w[:, :3, 2].double()
        cos_axis = (axis * -d).sum(-1) / d.norm(dim=-1)
        assert (cos_axis > 1 - 1e-6).all()  # every camera looks straight at the object
        for c in inputs.centers.double():
            v = c - target
            cos = (d @ v) / (d.norm(dim=-1) * v.norm())
            assert math.degrees(math.acos(min(float(cos.max()), 1.0))) < 4.0
    # default target: the point nearest both optical axes, here the object itself
    assert torch.allclose(input_orbit(cams, 8).centers.double().mean(0)[:2], target[:2], atol=1e-3)


def test_real3d_cycle_pose_and_curriculum():
    """The cycle maps the input camera back onto itself when the novel pose is the input's (identity relative
    pose); a novel view at azimuth +θ (or elevation +φ) sends it to -θ (-φ). The curriculum's angles are exactly
    15 degrees at p = 0 and span 15-90 at p = 1, with both signs."""
    from fewview.cameras import curriculum_angles, cycle_pose, spherical_cameras

    canon = spherical_cameras(torch.tensor([0.0]), torch.tensor([0.0]), 3.0, 0.6912, 64)
    assert torch.allclose(cycle_pose(canon.c2w, canon.c2w), canon.c2w.double(), atol=1e-12)
    for az, el in ((0.7, 0.0), (-1.2, 0.0), (0.0, 0.4)):
        novel = spherical_cameras(torch.tensor([az]), torch.tensor([el]), 3.0, 0.6912, 64)
        back = spherical_cameras(torch.tensor([-az]), torch.tensor([-el]), 3.0, 0.6912, 64)
        assert torch.allclose(cycle_pose(canon.c2w, novel.c2w), back.c2w.double(), atol=1e-9)
    assert torch.allclose(canon.centers[0].double(), torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    az0, el0 = curriculum_angles(0.0, 200, generator=g)
    assert torch.allclose(az0.abs(), torch.full((200,), math.radians(15), dtype=torch.float64))
    assert torch.allclose(el0.abs(), torch.full((200,), math.radians(15), dtype=torch.float64))
    az1, el1 = curriculum_angles(1.0, 2000, generator=g)
    for a in (az1, el1):
        d = a.abs().rad2deg()
        assert d.min() >= 15 - 1e-9 and d.max() <= 90 + 1e-9 and d.min() < 17 and d.max() > 88
        assert (a > 0).any() and (a < 0).any()
    azh, _ = curriculum_angles(0.5, 2000, generator=g)
    assert azh.abs().rad2deg().max() <= 52.5 + 1e-9
