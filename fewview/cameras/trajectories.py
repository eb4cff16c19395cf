"""Look-at, relative cameras and camera trajectories (orbits, SparseFusion's fitted circle)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import CameraError, Cameras, rigid_inverse


def _normalize(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """OpenCV camera-to-world matrices (..., 4, 4) for cameras at ``eye`` looking at ``target``.

    ``up`` is the world direction that should appear upwards in the image (image -y).
    """
    eye, target, up = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64) for v in (eye, target, up)))
    z = _normalize(target - eye)
    x = torch.linalg.cross(z, up)
    if bool((x.norm(dim=-1) < 1e-9).any()):
        raise CameraError("look_at: viewing direction is parallel to the up vector")
    x = _normalize(x)
    y = torch.linalg.cross(z, x)
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=torch.float64)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = x, y, z, eye
    c2w[..., 3, 3] = 1
    return c2w


def relative_to(cams: Cameras, index: int = 0, rotation_only: bool = False) -> Cameras:
    """Re-express a rig in the frame of camera ``index``.

    ``rotation_only=False``: camera ``index`` becomes the identity (SparseFusion's "rel" mode).
    ``rotation_only=True``: only its rotation is removed and the world origin stays put ("vox" mode).
    """
    ref = cams.c2w[index].double()
    T = rigid_inverse(ref)
    if rotation_only:
        T[:3, 3] = 0
    return Cameras((T @ cams.c2w.double()).to(cams.c2w.dtype), cams.K.clone(), cams.size.clone())


def orbit_basis(up: Tensor) -> tuple[Tensor, Tensor]:
    """The in-plane axes (a, b) of :func:`orbit` for a unit ``up``: azimuth 0 is along a, 90 along b."""
    helper = torch.zeros(3, dtype=torch.float64)
    helper[int(up.abs().argmin())] = 1.0  # the world axis least aligned with up
    a = _normalize(torch.linalg.cross(helper, up.double()))
    return a, torch.linalg.cross(up.double(), a)


def orbit(
    n: int,
    radius: float,
    elevation_deg: float,
    K: Tensor,
    height: int,
    width: int,
    center=(0.0, 0.0, 0.0),
    up=(0.0, 0.0, 1.0),
    start_azimuth_deg: float = 0.0,
) -> Cameras:
    """A turntable: ``n`` cameras evenly spaced in azimuth at ``radius`` and ``elevation_deg`` above the
    plane orthogonal to ``up`` through ``center``, all looking at ``center``."""
    up_t = _normalize(torch.as_tensor(up, dtype=torch.float64))
    center_t = torch.as_tensor(center, dtype=torch.float64)
    a, b = orbit_basis(up_t)
    az = torch.deg2rad(torch.tensor(start_azimuth_deg, dtype=torch.float64)) + torch.arange(n, dtype=torch.float64) * (
        2 * math.pi / n
    )
    el = math.radians(elevation_deg)
    dirs = math.cos(el) * (torch.cos(az)[:, None] * a + torch.sin(az)[:, None] * b) + math.sin(el) * up_t
    eye = center_t + radius * dirs
    c2w = look_at(eye, center_t.expand_as(eye), up_t.expand_as(eye))
    K = torch.as_tensor(K, dtype=torch.float64).reshape(-1, 3, 3).expand(n, 3, 3).clone()
    return Cameras(c2w, K, torch.tensor([height, width]))


def nearest_point_to_axes(cams: Cameras) -> Tensor:
    """Least-squares point closest to every camera's optical axis (3,)."""
    o = cams.centers.double()
    d = _normalize(cams.R[:, :, 2].double())
    P = torch.eye(3, dtype=torch.float64) - d[:, :, None] * d[:, None, :]
    A = P.sum(0)
    b = (P @ o[:, :, None]).sum(0)[:, 0]
    return torch.linalg.solve(A, b)


@dataclass
class Circle3D:
    """A circle in 3-D: centre, unit normal, radius, and an in-plane basis (u, v) with u x v = normal."""

    center: Tensor
    normal: Tensor
    radius: float
    u: Tensor
    v: Tensor

    def point(self, angle: Tensor) -> Tensor:
        angle = torch.as_tensor(angle, dtype=torch.float64)
        return self.center + self.radius * (torch.cos(angle)[..., None] * self.u + torch.sin(angle)[..., None] * self.v)

    def angle_of(self, p: Tensor) -> Tensor:
        d = torch.as_tensor(p, dtype=torch.float64) - self.center
        return torch.atan2(d @ self.v, d @ self.u)


def fit_circle(points: Tensor, up_hint: Tensor | None = None) -> Circle3D:
    """Fit a circle to (N, 3) points: plane by SVD, then an algebraic least-squares 2-D circle.

    The normal is oriented towards ``up_hint`` when given.
    """
    p = torch.as_tensor(points, dtype=torch.float64)
    if p.shape[0] < 3:
        raise CameraError(f"fit_circle: need at least 3 points, got {p.shape[0]}")
    mean = p.mean(0)
    _, _, vh = torch.linalg.svd(p - mean)
    u, v, normal = vh[0], vh[1], vh[2]
    if up_hint is not None and float(normal @ torch.as_tensor(up_hint, dtype=torch.float64)) < 0:
        normal = -normal
    v = torch.linalg.cross(normal, u)
    x = (p - mean) @ u
    y = (p - mean) @ v
    # x^2 + y^2 = 2 a x + 2 b y + c  (Kasa fit), r^2 = c + a^2 + b^2
    A = torch.stack([2 * x, 2 * y, torch.ones_like(x)], -1)
    rhs = x * x + y * y
    sol = torch.linalg.lstsq(A, rhs[:, None]).solution[:, 0]
    a, b, c = sol
    center = mean + a * u + b * v
    radius = float(torch.sqrt(c + a * a + b * b))
    return Circle3D(center, normal, radius, u, v)


def sparsefusion_trajectory(
    cams: Cameras,
    n: int = 50,
    elevation_jitter: float = 0.0,
    generator: torch.Generator | None = None,
) -> Cameras:
    """SparseFusion's distillation path: ``n`` cameras on the circle fitted to the capture cameras'
    centres, starting at camera 0, looking at the least-squares intersection of the optical axes,
    with optional uniform out-of-plane jitter of up to ``elevation_jitter`` radians (0.17 in the paper's
    code). Intrinsics and image size are taken from camera 0."""
    # The capture cameras' mean "up" (-y in OpenCV) orients the plane normal.
    up_hint = -cams.R[:, :, 1].double().mean(0)
    circle = fit_circle(cams.centers, up_hint=up_hint)
    target = nearest_point_to_axes(cams)
    theta0 = circle.angle_of(cams.centers[0].double())
    theta = theta0 + torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    eye = circle.point(theta)
    if elevation_jitter > 0:
        jit = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * elevation_jitter
        radial = eye - circle.center
        eye = circle.center + torch.cos(jit)[:, None] * radial + torch.sin(jit)[:, None] * circle.radius * circle.normal
    c2w = look_at(eye, target.expand_as(eye), circle.normal.expand_as(eye))
    K = cams.K[:1].double().expand(n, 3, 3).clone()
    return Cameras(c2w, K, cams.size[:1].expand(n, 2).clone())


def orbit_axis(cams: Cameras) -> Tensor:
    """The world direction that is "up" in every image: orthogonal to all the cameras' x axes (exact for
    cameras made by look_at with one up vector), signed like their mean image-up (-y); for one camera, or x axes
    that do not pin it down, the mean image-up itself."""
    mean_up = _normalize(-cams.R[:, :, 1].double().mean(0))
    if len(cams) < 2:
        return mean_up
    _, sv, vh = torch.linalg.svd(cams.R[:, :, 0].double())
    if float(sv[1]) < 1e-3 * float(sv[0]):
        return mean_up
    axis = vh[-1]
    return axis if float(axis @ mean_up) >= 0 else -axis


def input_orbit(cams: Cameras, n: int = 50, target: Tensor | None = None, elevation_jitter: float = 0.0,
                generator: torch.Generator | None = None, up: Tensor | None = None) -> Cameras:  # fmt: skip
    """A distillation path from the input cameras alone (any number, 1 included): ``n`` cameras on the circle
    about the axis through ``target`` (default: the point nearest the inputs' optical axes, or 3 units ahead of
    a single camera) along their common up direction (:func:`orbit_axis`), at their mean height and mean
    distance from that axis, starting at input 0, all looking at ``target``; optional out-of-plane jitter as
    SparseFusion's. ``up`` overrides the axis direction (a known world up)."""
    c = cams.centers.double()
    up = orbit_axis(cams) if up is None else _normalize(torch.as_tensor(up, dtype=torch.float64))
    if target is None:
        target = nearest_point_to_axes(cams) if len(cams) >= 2 else c[0] + 3 * cams.R[0, :, 2].double()
    target = torch.as_tensor(target, dtype=torch.float64)
    rel = c - target
    height = rel @ up
    horizontal = rel - height[:, None] * up
    radius = float(horizontal.norm(dim=-1).mean())
    if radius < 1e-9:
        raise CameraError("input_orbit: the inputs lie on the up axis through the target; no orbit around it")
    u = _normalize(horizontal[0]) if float(horizontal[0].norm()) > 1e-9 else orbit_basis(up)[0]
    v = torch.linalg.cross(up, u)
    circle = Circle3D(target + float(height.mean()) * up, up, radius, u, v)
    theta = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    eye = circle.point(theta)
    if elevation_jitter > 0:
        jit = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * elevation_jitter
        radial = eye - circle.center
        eye = circle.center + torch.cos(jit)[:, None] * radial + torch.sin(jit)[:, None] * radius * up
    c2w = look_at(eye, target.expand_as(eye), up.expand_as(eye))
    return Cameras(c2w.to(cams.c2w.dtype), cams.K[:1].expand(n, 3, 3).clone(), cams.size[:1].expand(n, 2).clone())


@dataclass
class PseudoViews:
    """Cameras near the inputs, in draw order: ``cameras[i]`` is input ``closest[i]`` moved by ``sigmas[i]``."""

    cameras: Cameras
    closest: Tensor  # (N,) index of the input camera each one perturbs (its closest training view)
    sigmas: Tensor  # (N,) standard deviation of the perturbation, world units


def annealed_sigmas(n: int, start: float = 0.01, end: float = 0.05) -> Tensor:
    """IPSM's schedule: σ_i = end·max(start/end, (i+1)/n), rising linearly from ``start`` to ``end``."""
    i = torch.arange(n, dtype=torch.float64)
    return end * torch.clamp((i + 1) / max(n, 1), min=start / end)


def pseudo_views(cams: Cameras, n: int, target: Tensor, scale: float, sigma: tuple[float, float] = (0.01, 0.05),
                 generator: torch.Generator | None = None) -> PseudoViews:  # fmt: skip
    """IPSM's unseen views: a random input camera whose centre and look-at point (``target``) are moved by
    N(0, σ_i·scale) each, with σ annealed over the draw order (:func:`annealed_sigmas`); same up vector and
    intrinsics. Used in order, so the perturbation grows as the fit proceeds."""
    sig = annealed_sigmas(n, *sigma) * scale
    closest = torch.randint(0, len(cams), (n,), generator=generator)
    noise = torch.randn(n, 2, 3, generator=generator, dtype=torch.float64)
    base = cams.c2w.double()[closest]
    eye = base[:, :3, 3] + noise[:, 0] * sig[:, None]
    tgt = target.double().reshape(1, 3) + noise[:, 1] * sig[:, None]
    up = -base[:, :3, 1]
    c2w = look_at(eye, tgt, up).to(cams.c2w.dtype)
    return PseudoViews(Cameras(c2w, cams.K[closest].clone(), cams.size[closest].clone()), closest, sig)


def spherical_cameras(azimuth: Tensor, elevation: Tensor, distance: float, fov: float, size: int) -> Cameras:
    """Cameras on a sphere around the origin looking at it, z up (Real3D's/TripoSR's convention): azimuth from
    +x towards +y and elevation above the xy plane, in radians; vertical field of view ``fov`` radians."""
    az = torch.as_tensor(azimuth, dtype=torch.float64).reshape(-1)
    el = torch.as_tensor(elevation, dtype=torch.float64).reshape(-1)
    eye = distance * torch.stack([torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], -1)
    c2w = look_at(eye, torch.zeros_like(eye), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(eye))
    f = 0.5 * size / math.tan(fov / 2)
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float64)
    return Cameras(c2w, K.expand(len(az), 3, 3).clone(), torch.tensor([size, size]))


def curriculum_angles(p: float, n: int = 1, low: float = 15.0, high: float = 90.0,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Real3D's cycle-view curriculum at training progress ``p`` in [0, 1]: |azimuth| and |elevation| (radians)
    each ~ U[low, low + p·(high − low)] degrees, with random signs."""
    span = low + min(max(p, 0.0), 1.0) * (high - low)
    u = torch.rand(2, n, generator=generator, dtype=torch.float64)
    sign = torch.where(torch.rand(2, n, generator=generator) < 0.5, -1.0, 1.0).double()
    deg = low + u * (span - low)
    ang = torch.deg2rad(deg) * sign
    return ang[0], ang[1]


def cycle_pose(canonical_c2w: Tensor, novel_c2w: Tensor) -> Tensor:
    """Real3D's cycle: the novel view's render becomes the new (canonical) input, and the original input camera is
    rendered from it at canon · novel⁻¹ · canon (world-to-camera algebra on c2w matrices, (..., 4, 4))."""
    canon = canonical_c2w.double()
    return canon @ torch.linalg.inv(novel_c2w.double()) @ canon
