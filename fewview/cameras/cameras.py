"""The batched camera type and the one convention used inside fewview.

Convention (everything inside fewview uses it; converters live in ``convert.py``):

* **World-from-camera** 4x4 matrices (``c2w``) in the **OpenCV** camera frame:
  +x right, +y down, +z forward (the camera looks along +z).
* **Intrinsics** ``K`` in pixels. Continuous image coordinates put the top-left
  *corner* of the image at (0, 0), so the centre of pixel (row i, column j) is
  (j + 0.5, i + 0.5) -- COLMAP's convention. A centred principal point is (W/2, H/2).
* **Image size** ``size`` as (height, width) integers per camera.
* Units are whatever the scene's world units are; nothing is rescaled silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class CameraError(ValueError):
    """Invalid camera parameters (the message names the offending field)."""


def _as_batch(x: Tensor, ndim: int) -> Tensor:
    x = torch.as_tensor(x)
    return x[None] if x.ndim == ndim else x


@dataclass
class Cameras:
    """A batch of B pinhole cameras.

    Attributes:
        c2w: (B, 4, 4) float, world-from-camera, OpenCV axes (x right, y down, z forward).
        K: (B, 3, 3) float, intrinsics in pixels (pixel centres at +0.5).
        size: (B, 2) int64, image (height, width) in pixels.
    """

    c2w: Tensor
    K: Tensor
    size: Tensor

    def __post_init__(self) -> None:
        self.c2w = _as_batch(self.c2w, 2)
        self.K = _as_batch(self.K, 2)
        size = torch.as_tensor(self.size, dtype=torch.int64, device=self.c2w.device)
        self.size = size[None] if size.ndim == 1 else size
        if self.c2w.shape[-2:] == (3, 4):
            bottom = torch.zeros(*self.c2w.shape[:-2], 1, 4, dtype=self.c2w.dtype, device=self.c2w.device)
            bottom[..., 0, 3] = 1
            self.c2w = torch.cat([self.c2w, bottom], dim=-2)
        b = self.c2w.shape[0]
        if self.c2w.shape != (b, 4, 4):
            raise CameraError(f"c2w: expected shape (B, 4, 4) or (B, 3, 4), got {tuple(self.c2w.shape)}")
        if self.K.shape != (b, 3, 3):
            raise CameraError(f"K: expected shape ({b}, 3, 3), got {tuple(self.K.shape)}")
        if self.size.shape == (1, 2) and b != 1:
            self.size = self.size.expand(b, 2).clone()
        if self.size.shape != (b, 2):
            raise CameraError(f"size: expected shape ({b}, 2), got {tuple(self.size.shape)}")

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, idx) -> Cameras:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return Cameras(self.c2w[idx], self.K[idx], self.size[idx])

    def to(self, *args, **kwargs) -> Cameras:
        c2w = self.c2w.to(*args, **kwargs)
        return Cameras(c2w, self.K.to(*args, **kwargs), self.size.to(c2w.device))

    @staticmethod
    def cat(cams: list[Cameras]) -> Cameras:
        return Cameras(
            torch.cat([c.c2w for c in cams]), torch.cat([c.K for c in cams]), torch.cat([c.size for c in cams])
        )

    @property
    def R(self) -> Tensor:
        """(B, 3, 3) camera-to-world rotation (columns are the camera's x, y, z axes in world)."""
        return self.c2w[:, :3, :3]

    @property
    def centers(self) -> Tensor:
        """(B, 3) camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    @property
    def w2c(self) -> Tensor:
        """(B, 4, 4) world-to-camera matrices (exact rigid inverse)."""
        return rigid_inverse(self.c2w)

    @property
    def height(self) -> int:
        return int(self._uniform_size()[0])

    @property
    def width(self) -> int:
        return int(self._uniform_size()[1])

    def _uniform_size(self) -> Tensor:
        if not bool((self.size == self.size[0]).all()):
            raise CameraError("size: cameras in this batch have different image sizes")
        return self.size[0]

    @property
    def fx(self) -> Tensor:
        return self.K[:, 0, 0]

    @property
    def fy(self) -> Tensor:
        return self.K[:, 1, 1]

    @property
    def cx(self) -> Tensor:
        return self.K[:, 0, 2]

    @property
    def cy(self) -> Tensor:
        return self.K[:, 1, 2]

    @property
    def fov_x(self) -> Tensor:
        return 2 * torch.atan(0.5 * self.size[:, 1].to(self.K) / self.fx)

    # -------------------------------------------------------------- geometry
    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points.

        Args:
            points: (P, 3) shared by all cameras, or (B, P, 3).
        Returns:
            uv: (B, P, 2) continuous pixel coordinates (x, y), pixel centres at +0.5.
            depth: (B, P) z in the camera frame (positive in front of the camera).
        """
        if points.ndim == 2:
            points = points[None].expand(len(self), -1, -1)
        w2c = self.w2c.to(points.dtype)
        cam = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
        z = cam[..., 2]
        pix = cam @ self.K.to(points.dtype).transpose(1, 2)
        uv = pix[..., :2] / z[..., None]
        return uv, z

    def unproject(self, uv: Tensor, depth: Tensor) -> Tensor:
        """Inverse of :meth:`project`: (B, P, 2) pixels and (B, P) z-depths -> (B, P, 3) world points."""
        ones = torch.ones_like(uv[..., :1])
        pix = torch.cat([uv, ones], dim=-1)
        cam = pix @ torch.linalg.inv(self.K.to(uv.dtype)).transpose(1, 2) * depth[..., None]
        c2w = self.c2w.to(uv.dtype)
        return cam @ c2w[:, :3, :3].transpose(1, 2) + c2w[:, None, :3, 3]

    # ------------------------------------------------------- image operations
    def resize(self, height: int, width: int) -> Cameras:
        """Cameras for the images resized to (height, width) (every camera in the batch)."""
        sy = height / self.size[:, 0].to(self.K)
        sx = width / self.size[:, 1].to(self.K)
        K = self.K.clone()
        K[:, 0, :] = K[:, 0, :] * sx[:, None]
        K[:, 1, :] = K[:, 1, :] * sy[:, None]
        size = torch.tensor([height, width], device=self.size.device).expand(len(self), 2).clone()
        return Cameras(self.c2w.clone(), K, size)

    def scale(self, factor: float) -> Cameras:
        """Resize by a factor (e.g. 0.5 halves the resolution). Sizes are rounded."""
        h = int(round(self.height * factor))
        w = int(round(self.width * factor))
        return self.resize(h, w)

    def crop(self, boxes: Tensor) -> Cameras:
        """Cameras for crops given as (B, 4) or (4,) boxes ``x0, y0, x1, y1`` in pixels (x1, y1 exclusive)."""
        boxes = torch.as_tensor(boxes, dtype=self.K.dtype, device=self.K.device)
        boxes = boxes.expand(len(self), 4)
        K = self.K.clone()
        K[:, 0, 2] -= boxes[:, 0]
        K[:, 1, 2] -= boxes[:, 1]
        size = torch.stack([boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], dim=-1).round().long()
        return Cameras(self.c2w.clone(), K, size)

    # ------------------------------------------------------------ validation
    def validate(self, where: str = "cameras", atol: float = 1e-3) -> None:
        """Raise :class:`CameraError` for non-finite values or non-orthonormal rotations."""
        for name, t in (("c2w", self.c2w), ("K", self.K)):
            bad = ~torch.isfinite(t).flatten(1).all(dim=1)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise CameraError(f"{where}[{i}].{name}: contains NaN or Inf")
        check_rotations(self.R, where=where, atol=atol)
        if bool((self.size <= 0).any()):
            raise CameraError(f"{where}.size: image sizes must be positive")


def intrinsics_matrix(fx, fy, cx, cy) -> Tensor:
    """A (3, 3) (or batched) pinhole intrinsics matrix from focal lengths and principal point in pixels."""
    fx, fy, cx, cy = (torch.as_tensor(v, dtype=torch.float64) for v in (fx, fy, cx, cy))
    fx, fy, cx, cy = torch.broadcast_tensors(fx, fy, cx, cy)
    K = torch.zeros(*fx.shape, 3, 3, dtype=torch.float64)
    K[..., 0, 0] = fx
    K[..., 1, 1] = fy
    K[..., 0, 2] = cx
    K[..., 1, 2] = cy
    K[..., 2, 2] = 1
    return K


def rigid_inverse(T: Tensor) -> Tensor:
    """Inverse of (..., 4, 4) rigid transforms without a general matrix inverse."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    out = torch.zeros_like(T)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1
    return out


def check_rotations(R: Tensor, where: str = "rotation", atol: float = 1e-3) -> None:
    """Raise :class:`CameraError` unless every (.., 3, 3) matrix is a proper rotation."""
    R = R.reshape(-1, 3, 3).double()
    if not bool(torch.isfinite(R).all()):
        i = int((~torch.isfinite(R).flatten(1).all(1)).nonzero()[0, 0])
        raise CameraError(f"{where}[{i}]: rotation contains NaN or Inf")
    eye = torch.eye(3, dtype=R.dtype)
    err = (R.transpose(1, 2) @ R - eye).abs().flatten(1).amax(dim=1)
    det = torch.linalg.det(R)
    bad = (err > atol) | ((det - 1).abs() > atol)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise CameraError(
            f"{where}[{i}]: rotation is not orthonormal "
            f"(max |RᵀR - I| = {float(err[i]):.3g}, det = {float(det[i]):.4f})"
        )
