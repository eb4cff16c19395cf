"""Converters between fewview's internal camera convention and the conventions found in the wild.

Each ``from_*`` builds :class:`Cameras`; each ``to_*`` returns the external form, and
``to_X(from_X(a)) == a`` (tested). Conventions:

==================  ===========================================================================
Blender / OpenGL    c2w, camera axes x right, y up, z back (looks along -z).
OpenCV              w2c ``[R | t]``, x right, y down, z forward; pixel centres at integers.
LLFF                ``poses_bounds.npy`` rows: 3x5 c2w block with columns [down, right, back,
                    centre, (H, W, focal)], then near, far.
COLMAP              w2c as unit quaternion (w, x, y, z) + t, OpenCV axes; pixel centres at +0.5.
PyTorch3D / CO3D    row-vector ``X_cam = X_world @ R + T``, camera axes x left, y up, z forward;
                    focal and principal point in NDC (+x left, +y up, scaled by min(H, W) / 2).
DTU / IDR           ``P = world_mat @ scale_mat`` (3x4 projection of normalised coordinates), split
                    by RQ decomposition into K, R, t; pixel centres at integers.
==================  ===========================================================================
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .cameras import CameraError, Cameras, intrinsics_matrix, rigid_inverse

# Flip between OpenGL (x right, y up, z back) and OpenCV (x right, y down, z forward) camera axes.
_GL_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def _f64(x) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).to(torch.float64)


def _size(height, width, n: int) -> Tensor:
    size = torch.stack(torch.broadcast_tensors(torch.as_tensor(height), torch.as_tensor(width)), dim=-1)
    return size.long().reshape(-1, 2).expand(n, 2).clone()


# ---------------------------------------------------------------- Blender / OpenGL
def from_opengl(c2w_gl, K, height, width) -> Cameras:
    """From OpenGL/Blender camera-to-world matrices (B, 4, 4) or (B, 3, 4) and pixel intrinsics."""
    c2w = _f64(c2w_gl)
    if c2w.ndim == 2:
        c2w = c2w[None]
    if c2w.shape[-2:] == (3, 4):
        c2w = torch.cat([c2w, torch.tensor([[[0, 0, 0, 1.0]]], dtype=c2w.dtype).expand(len(c2w), 1, 4)], 1)
    K = _f64(K).expand(len(c2w), 3, 3)
    return Cameras(c2w @ _GL_CV, K.clone(), _size(height, width, len(c2w)))


def to_opengl(cams: Cameras) -> Tensor:
    """(B, 4, 4) OpenGL/Blender camera-to-world matrices."""
    return cams.c2w.double() @ _GL_CV


def from_blender_fov(c2w_gl, camera_angle_x: float, height: int, width: int) -> Cameras:
    """NeRF-synthetic style: horizontal FOV ``camera_angle_x`` (radians), centred principal point."""
    f = 0.5 * width / np.tan(0.5 * camera_angle_x)
    return from_opengl(c2w_gl, intrinsics_matrix(f, f, width / 2, height / 2), height, width)


# ---------------------------------------------------------------------- OpenCV
def from_opencv(R_w2c, t_w2c, K_cv, height, width) -> Cameras:
    """From OpenCV extrinsics (x_cam = R x_world + t) and intrinsics with integer pixel centres."""
    R = _f64(R_w2c).reshape(-1, 3, 3)
    t = _f64(t_w2c).reshape(-1, 3)
    w2c = torch.eye(4, dtype=torch.float64).repeat(len(R), 1, 1)
    w2c[:, :3, :3] = R
    w2c[:, :3, 3] = t
    K = _f64(K_cv).reshape(-1, 3, 3).expand(len(R), 3, 3).clone()
    K[:, 0, 2] += 0.5
    K[:, 1, 2] += 0.5
    return Cameras(rigid_inverse(w2c), K, _size(height, width, len(R)))


def to_opencv(cams: Cameras) -> tuple[Tensor, Tensor, Tensor]:
    """(R (B,3,3), t (B,3), K (B,3,3)) in OpenCV's convention (integer pixel centres)."""
    w2c = cams.w2c.double()
    K = cams.K.double().clone()
    K[:, 0, 2] -= 0.5
    K[:, 1, 2] -= 0.5
    return w2c[:, :3, :3], w2c[:, :3, 3], K


# ------------------------------------------------------------------------ LLFF
def from_llff(poses_bounds) -> tuple[Cameras, Tensor]:
    """From an LLFF ``poses_bounds`` array (N, 17). Returns cameras and (N, 2) near/far bounds."""
    pb = _f64(poses_bounds)
    if pb.ndim != 2 or pb.shape[1] != 17:
        raise CameraError(f"poses_bounds: expected shape (N, 17), got {tuple(pb.shape)}")
    block = pb[:, :15].reshape(-1, 3, 5)
    down, right, back, centre = block[..., 0], block[..., 1], block[..., 2], block[..., 3]
    h, w, f = block[:, 0, 4], block[:, 1, 4], block[:, 2, 4]
    c2w = torch.eye(4, dtype=torch.float64).repeat(len(pb), 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = down
    c2w[:, :3, 2] = -back
    c2w[:, :3, 3] = centre
    K = intrinsics_matrix(f, f, w / 2, h / 2)
    return Cameras(c2w, K, torch.stack([h, w], -1).round().long()), pb[:, 15:17].clone()


def to_llff(cams: Cameras, bounds) -> Tensor:
    """(N, 17) ``poses_bounds`` (requires fx == fy and a centred principal point, as LLFF does)."""
    c2w = cams.c2w.double()
    h, w = cams.size[:, 0].double(), cams.size[:, 1].double()
    block = torch.stack(
        [c2w[:, :3, 1], c2w[:, :3, 0], -c2w[:, :3, 2], c2w[:, :3, 3], torch.stack([h, w, cams.fx.double()], -1)], -1
    )
    return torch.cat([block.reshape(-1, 15), _f64(bounds).reshape(-1, 2)], dim=1)


# ---------------------------------------------------------------------- COLMAP
def quat_to_rotmat(q) -> Tensor:
    """Unit quaternions (..., 4) as (w, x, y, z) -> rotation matrices (..., 3, 3)."""
    q = _f64(q)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)  # fmt: skip


def rotmat_to_quat(R) -> Tensor:
    """Rotation matrices (..., 3, 3) -> unit quaternions (w, x, y, z) with w >= 0.

    The quaternion is the top eigenvector of a symmetric 4x4 matrix built from R (Bar-Itzhack),
    which is stable for every rotation, 180-degree ones included.
    """
    R = _f64(R)
    m = R.reshape(-1, 3, 3)
    xx, xy, xz = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    yx, yy, yz = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    zx, zy, zz = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
    K = (
        torch.stack(
            [
                torch.stack([xx + yy + zz, zy - yz, xz - zx, yx - xy], -1),
                torch.stack([zy - yz, xx - yy - zz, xy + yx, xz + zx], -1),
                torch.stack([xz - zx, xy + yx, yy - xx - zz, yz + zy], -1),
                torch.stack([yx - xy, xz + zx, yz + zy, zz - xx - yy], -1),
            ],
            dim=1,
        )
        / 3
    )
    q = torch.linalg.eigh(K).eigenvectors[:, :, -1]  # (w, x, y, z) of the largest eigenvalue
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(*R.shape[:-2], 4)


def from_colmap(qvec, tvec, K, height, width) -> Cameras:
    """From COLMAP image poses (w2c quaternion (w,x,y,z) and translation) and pixel intrinsics."""
    R = quat_to_rotmat(_f64(qvec).reshape(-1, 4))
    w2c = torch.eye(4, dtype=torch.float64).repeat(len(R), 1, 1)
    w2c[:, :3, :3] = R
    w2c[:, :3, 3] = _f64(tvec).reshape(-1, 3)
    K = _f64(K).reshape(-1, 3, 3).expand(len(R), 3, 3).clone()
    return Cameras(rigid_inverse(w2c), K, _size(height, width, len(R)))


def to_colmap(cams: Cameras) -> tuple[Tensor, Tensor, Tensor]:
    """(qvec (B,4) as w,x,y,z, tvec (B,3), K (B,3,3)) in COLMAP's convention."""
    w2c = cams.w2c.double()
    return rotmat_to_quat(w2c[:, :3, :3]), w2c[:, :3, 3], cams.K.double()


# ------------------------------------------------------------ PyTorch3D / CO3D
# PyTorch3D camera axes (x left, y up, z forward) are OpenCV's with x and y negated.
_P3D_CV = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))


def from_pytorch3d(R, T, focal_ndc, principal_ndc, image_size_hw) -> Cameras:
    """From PyTorch3D ``PerspectiveCameras`` in NDC (``in_ndc=True``), as CO3D stores them.

    Args:
        R: (B, 3, 3) with the row-vector convention ``X_cam = X_world @ R + T``.
        T: (B, 3).
        focal_ndc: (B, 2) or (B,) focal length in NDC units (min(H, W) / 2 pixels per unit).
        principal_ndc: (B, 2) principal point in NDC (+x left, +y up).
        image_size_hw: (B, 2) or (2,) image (height, width).
    """
    R = _f64(R).reshape(-1, 3, 3)
    n = len(R)
    T = _f64(T).reshape(n, 3)
    f = _f64(focal_ndc).reshape(n, -1).expand(n, 2)
    p = _f64(principal_ndc).reshape(n, 2)
    hw = _f64(image_size_hw).reshape(-1, 2).expand(n, 2)
    half = hw.min(dim=1).values / 2
    fx, fy = f[:, 0] * half, f[:, 1] * half
    cx = hw[:, 1] / 2 - p[:, 0] * half
    cy = hw[:, 0] / 2 - p[:, 1] * half
    # Column-vector w2c in PyTorch3D axes is (R^T, T); switch to OpenCV axes.
    w2c = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    w2c[:, :3, :3] = _P3D_CV @ R.transpose(1, 2)
    w2c[:, :3, 3] = T @ _P3D_CV
    return Cameras(rigid_inverse(w2c), intrinsics_matrix(fx, fy, cx, cy), hw.round().long())


def to_pytorch3d(cams: Cameras) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(R, T, focal_ndc (B,2), principal_ndc (B,2), image_size_hw (B,2)) in PyTorch3D's NDC convention."""
    w2c = cams.w2c.double()
    R = (_P3D_CV @ w2c[:, :3, :3]).transpose(1, 2)
    T = w2c[:, :3, 3] @ _P3D_CV
    hw = cams.size.double()
    half = hw.min(dim=1).values / 2
    K = cams.K.double()
    focal = torch.stack([K[:, 0, 0], K[:, 1, 1]], -1) / half[:, None]
    pp = torch.stack([(hw[:, 1] / 2 - K[:, 0, 2]), (hw[:, 0] / 2 - K[:, 1, 2])], -1) / half[:, None]
    return R, T, focal, pp, cams.size.clone()


# ------------------------------------------------------------------- DTU / IDR
def decompose_projection(P) -> tuple[Tensor, Tensor]:
    """Split (B, 3, 4) projection matrices into K (B,3,3, K[2,2]=1) and c2w (B,4,4) by RQ decomposition.

    Matches IDR's ``load_K_Rt_from_P`` (OpenCV ``decomposeProjectionMatrix``): K has a positive
    diagonal; the returned c2w uses OpenCV axes and the K keeps integer pixel centres.
    """
    P = _f64(P).reshape(-1, 3, 4).numpy()
    Ks, c2ws = [], []
    for i, Pi in enumerate(P):
        M = Pi[:, :3]
        if not np.isfinite(Pi).all():
            raise CameraError(f"projection[{i}]: contains NaN or Inf")
        if abs(np.linalg.det(M)) < 1e-12:
            raise CameraError(f"projection[{i}]: left 3x3 block is singular")
        # RQ via QR of the row-reversed transpose.
        flip = np.eye(3)[::-1]
        q, r = np.linalg.qr((flip @ M).T)
        Kq = flip @ r.T @ flip
        Rq = flip @ q.T
        sign = np.diag(np.sign(np.diag(Kq)))
        Kq, Rq = Kq @ sign, sign @ Rq
        if np.linalg.det(Rq) < 0:  # P is defined up to scale: -P = K (-R) gives a proper rotation
            Rq = -Rq
        center = -np.linalg.solve(M, Pi[:, 3])  # invariant to the scale of P
        c2w = np.eye(4)
        c2w[:3, :3] = Rq.T
        c2w[:3, 3] = center
        Ks.append(Kq / Kq[2, 2])
        c2ws.append(c2w)
    return torch.from_numpy(np.stack(Ks)), torch.from_numpy(np.stack(c2ws))


def from_dtu(world_mats, scale_mats, height, width) -> Cameras:
    """From IDR/NeuS ``cameras.npz`` matrices: ``P = world_mat @ scale_mat`` (cameras in normalised space)."""
    wm = _f64(world_mats).reshape(-1, 4, 4)
    sm = _f64(scale_mats).reshape(-1, 4, 4).expand(len(wm), 4, 4)
    K, c2w = decompose_projection((wm @ sm)[:, :3, :4])
    K = K.clone()
    K[:, 0, 2] += 0.5
    K[:, 1, 2] += 0.5
    return Cameras(c2w, K, _size(height, width, len(wm)))


def to_dtu(cams: Cameras, scale_mats=None) -> Tensor:
    """(B, 4, 4) ``world_mat`` such that ``world_mat @ scale_mat`` projects normalised points."""
    n = len(cams)
    sm = torch.eye(4, dtype=torch.float64) if scale_mats is None else _f64(scale_mats)
    sm = sm.reshape(-1, 4, 4).expand(n, 4, 4)
    K4 = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    K4[:, :3, :3] = cams.K.double()
    K4[:, 0, 2] -= 0.5
    K4[:, 1, 2] -= 0.5
    return K4 @ cams.w2c.double() @ torch.linalg.inv(sm)
