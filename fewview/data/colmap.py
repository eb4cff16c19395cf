"""COLMAP sparse models (``sparse/0``): ``cameras``, ``images``, ``points3D`` as ``.txt`` or ``.bin``.

COLMAP stores world-to-camera poses as a unit quaternion (w, x, y, z) and translation in the
OpenCV axes, and puts the centre of the top-left pixel at (0.5, 0.5) -- fewview's convention.
Only undistorted models are accepted: pinhole ones, or radial/OpenCV ones whose distortion
parameters are all zero (run ``colmap image_undistorter`` first otherwise).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras, intrinsics_matrix
from ..cameras.convert import from_colmap, quat_to_rotmat, rotmat_to_quat
from .io import downscale_scene, load_image, load_mask, stack_images
from .scene import DataError, Scene, validate_cameras

# model id -> (name, number of params)
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
MODEL_IDS = {name: i for i, (name, _) in CAMERA_MODELS.items()}


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # (w, x, y, z), world-to-camera
    tvec: np.ndarray
    camera_id: int
    name: str


@dataclass
class ColmapModel:
    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points: np.ndarray  # (P, 3) xyz
    colors: np.ndarray  # (P, 3) uint8


# ------------------------------------------------------------------- reading
def _read_text_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _parse_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cams = {}
    for i, ln in enumerate(_read_text_lines(path)):
        parts = ln.split()
        try:
            cid, model, w, h = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            params = np.array([float(p) for p in parts[4:]])
        except (ValueError, IndexError):
            raise DataError(path, f"camera line {i + 1}", f"cannot parse {ln!r}") from None
        cams[cid] = ColmapCamera(cid, model, w, h, params)
    return cams


def _parse_images_txt(path: Path) -> dict[int, ColmapImage]:
    images = {}
    # Each image has two lines: the pose line, then its 2-D points (an empty line when there are none).
    i = 0
    raw = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    while i < len(raw):
        ln = raw[i].strip()
        if not ln:
            i += 1
            continue
        parts = ln.split()
        try:
            iid = int(parts[0])
            q = np.array([float(v) for v in parts[1:5]])
            t = np.array([float(v) for v in parts[5:8]])
            cid = int(parts[8])
            name = " ".join(parts[9:])
        except (ValueError, IndexError):
            raise DataError(path, f"line {i + 1}", f"cannot parse image line {ln!r}") from None
        images[iid] = ColmapImage(iid, q, t, cid, name)
        i += 2
    return images


def _parse_points_txt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    xyz, rgb = [], []
    for ln in _read_text_lines(path):
        p = ln.split()
        xyz.append([float(v) for v in p[1:4]])
        rgb.append([int(v) for v in p[4:7]])
    return np.array(xyz, dtype=np.float64).reshape(-1, 3), np.array(rgb, dtype=np.uint8).reshape(-1, 3)


class _Reader:
    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes()
        self.pos = 0

    def read(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise DataError(self.path, f"byte {self.pos}", "file is truncated")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def read_cstr(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise DataError(self.path, f"byte {self.pos}", "unterminated image name")
        s = self.data[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return s


def _parse_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    r = _Reader(path)
    (n,) = r.read("Q")
    cams = {}
    for _ in range(n):
        cid, mid, w, h = r.read("iiQQ")
        if mid not in CAMERA_MODELS:
            raise DataError(path, f"camera {cid}.model_id", f"unknown camera model id {mid}")
        name, k = CAMERA_MODELS[mid]
        cams[cid] = ColmapCamera(cid, name, w, h, np.array(r.read("d" * k)))
    return cams


def _parse_images_bin(path: Path) -> dict[int, ColmapImage]:
    r = _Reader(path)
    (n,) = r.read("Q")
    images = {}
    for _ in range(n):
        vals = r.read("I7dI")
        iid, q, t, cid = vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8]
        name = r.read_cstr()
        (npts,) = r.read("Q")
        r.pos += npts * struct.calcsize("<ddq")
        images[iid] = ColmapImage(iid, q, t, cid, name)
    return images


def _parse_points_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    r = _Reader(path)
    (n,) = r.read("Q")
    xyz, rgb = np.zeros((n, 3)), np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        vals = r.read("Q3d3Bd")
        xyz[i], rgb[i] = vals[1:4], vals[4:7]
        (track,) = r.read("Q")
        r.pos += track * struct.calcsize("<ii")
    return xyz, rgb


def read_colmap_model(sparse_dir: str | Path) -> ColmapModel:
    """Read a COLMAP sparse model folder, preferring ``.bin`` files over ``.txt``."""
    d = Path(sparse_dir)
    out = {}
    for kind, parse_bin, parse_txt in (
        ("cameras", _parse_cameras_bin, _parse_cameras_txt),
        ("images", _parse_images_bin, _parse_images_txt),
    ):
        if (d / f"{kind}.bin").is_file():
            out[kind] = parse_bin(d / f"{kind}.bin")
        elif (d / f"{kind}.txt").is_file():
            out[kind] = parse_txt(d / f"{kind}.txt")
        else:
            raise DataError(d / f"{kind}.bin", "", f"file not found (nor {kind}.txt)")
    if (d / "points3D.bin").is_file():
        xyz, rgb = _parse_points_bin(d / "points3D.bin")
    elif (d / "points3D.txt").is_file():
        xyz, rgb = _parse_points_txt(d / "points3D.txt")
    else:
        xyz, rgb = np.zeros((0, 3)), np.zeros((0, 3), dtype=np.uint8)
    return ColmapModel(out["cameras"], out["images"], xyz, rgb)


# ------------------------------------------------------------------- writing
def write_colmap_model(
    sparse_dir: str | Path, cams: Cameras, names: list[str], binary: bool = True, points=None
) -> None:
    """Write cameras (one PINHOLE camera per image) and images in COLMAP's text or binary format."""
    d = Path(sparse_dir)
    d.mkdir(parents=True, exist_ok=True)
    q, t = rotmat_to_quat(cams.w2c[:, :3, :3].double()).numpy(), cams.w2c[:, :3, 3].double().numpy()
    K = cams.K.double().numpy()
    size = cams.size.numpy()
    pts = np.zeros((0, 3)) if points is None else np.asarray(points, dtype=np.float64)
    n = len(cams)
    if binary:
        with open(d / "cameras.bin", "wb") as f:
            f.write(struct.pack("<Q", n))
            for i in range(n):
                f.write(struct.pack("<iiQQ", i + 1, MODEL_IDS["PINHOLE"], int(size[i, 1]), int(size[i, 0])))
                f.write(struct.pack("<4d", K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2]))
        with open(d / "images.bin", "wb") as f:
            f.write(struct.pack("<Q", n))
            for i in range(n):
                f.write(struct.pack("<I7dI", i + 1, *q[i], *t[i], i + 1))
                f.write(names[i].encode() + b"\x00")
                f.write(struct.pack("<Q", 0))
        with open(d / "points3D.bin", "wb") as f:
            f.write(struct.pack("<Q", len(pts)))
            for j, p in enumerate(pts):
                f.write(struct.pack("<Q3d3Bd", j + 1, *p, 128, 128, 128, 0.0))
                f.write(struct.pack("<Q", 0))
    else:
        with open(d / "cameras.txt", "w") as f:
            f.write("# Camera list with one line of data per camera:\n")
            for i in range(n):
                fx, fy, cx, cy = (repr(float(v)) for v in (K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2]))
                f.write(f"{i + 1} PINHOLE {size[i, 1]} {size[i, 0]} {fx} {fy} {cx} {cy}\n")
        with open(d / "images.txt", "w") as f:
            f.write("# Image list with two lines of data per image:\n")
            for i in range(n):
                f.write(
                    " ".join(
                        [
                            str(i + 1),
                            *(repr(float(v)) for v in q[i]),
                            *(repr(float(v)) for v in t[i]),
                            str(i + 1),
                            names[i],
                        ]
                    )
                )
                f.write("\n\n")
        with open(d / "points3D.txt", "w") as f:
            for j, p in enumerate(pts):
                f.write(f"{j + 1} {' '.join(repr(float(v)) for v in p)} 128 128 128 0\n")


# -------------------------------------------------------------------- scene
def _pinhole(cam: ColmapCamera, path: Path) -> tuple[float, float, float, float]:
    p = cam.params
    m = cam.model
    if m in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "FOV"):
        f, cx, cy, dist = p[0], p[1], p[2], p[3:]
        fx = fy = f
    elif m in ("PINHOLE", "OPENCV", "OPENCV_FISHEYE", "FULL_OPENCV", "THIN_PRISM_FISHEYE"):
        fx, fy, cx, cy, dist = p[0], p[1], p[2], p[3], p[4:]
    else:
        raise DataError(path, f"camera {cam.id}.model", f"unknown camera model {m}")
    if "FISHEYE" in m or m == "FOV" or np.any(dist != 0):
        raise DataError(
            path,
            f"camera {cam.id}.model",
            f"{m} with distortion is not supported; undistort first (colmap image_undistorter)",
        )
    return fx, fy, cx, cy


def _load_masks(folder: Path, imgs: list[ColmapImage], size: tuple[int, int]) -> torch.Tensor:
    """Object masks ``masks/<stem>.png`` (or COLMAP's ``<name>.png``), one per image, 0-1 floats."""
    arrs = []
    for im in imgs:
        cands = [folder / (Path(im.name).stem + ".png"), folder / (im.name + ".png")]
        p = next((c for c in cands if c.is_file()), None)
        if p is None:
            raise DataError(folder, im.name, f"no mask for this image (expected {cands[0].name})")
        m = load_mask(p, im.name, source=folder)
        if m.shape != size:
            raise DataError(p, "", f"mask is {m.shape[1]}x{m.shape[0]}, its image is {size[1]}x{size[0]}")
        arrs.append(m)
    return torch.from_numpy(np.stack(arrs)[:, None].astype(np.float32))


def load_colmap(
    root: str | Path, sparse_dir: str = "sparse/0", image_dir: str = "images", downscale: float = 1.0
) -> Scene:
    """Load a COLMAP reconstruction: ``root/sparse/0`` and ``root/images`` (images sorted by name).

    Object masks are read from ``root/masks`` when it exists (``<image stem>.png``).
    ``meta["points"]`` holds the sparse points (list of xyz) and ``bounds`` their 1st-99th percentile box.
    """
    root = Path(root)
    sdir = root / sparse_dir
    model = read_colmap_model(sdir)
    if not model.images:
        raise DataError(sdir, "images", "no registered images")
    imgs = sorted(model.images.values(), key=lambda im: im.name)
    Ks, sizes, arrs, paths = [], [], [], []
    for im in imgs:
        if im.camera_id not in model.cameras:
            raise DataError(sdir, f"image {im.id}.camera_id", f"camera {im.camera_id} not in cameras file")
        cam = model.cameras[im.camera_id]
        fx, fy, cx, cy = _pinhole(cam, sdir)
        p = root / image_dir / im.name
        arr = load_image(p, f"image {im.id}.name", source=sdir)[..., :3]
        if arr.shape[:2] != (cam.height, cam.width):
            raise DataError(
                sdir,
                f"camera {cam.id}.width/height",
                f"image {im.name} is {arr.shape[1]}x{arr.shape[0]}, camera says {cam.width}x{cam.height}",
            )
        Ks.append(intrinsics_matrix(fx, fy, cx, cy))
        sizes.append((cam.height, cam.width))
        arrs.append(arr)
        paths.append(p)
    for im in imgs:
        if not np.isfinite(im.qvec).all() or not np.isfinite(im.tvec).all():
            raise DataError(sdir, f"image {im.id}.pose", "contains NaN or Inf")
        if abs(np.linalg.norm(im.qvec) - 1) > 1e-3:
            raise DataError(
                sdir, f"image {im.id}.qvec", f"quaternion is not unit length (|q| = {np.linalg.norm(im.qvec):.4f})"
            )
    images = stack_images(arrs, paths, sdir, "images")
    h, w = images.shape[-2:]
    masks = _load_masks(root / "masks", imgs, (h, w)) if (root / "masks").is_dir() else None
    cams = from_colmap(np.stack([i.qvec for i in imgs]), np.stack([i.tvec for i in imgs]), torch.stack(Ks), h, w)
    validate_cameras(cams, sdir, "images")
    cams = Cameras(cams.c2w.float(), cams.K.float(), cams.size)
    bounds = None
    if len(model.points) >= 8:
        lo, hi = np.percentile(model.points, 1, axis=0), np.percentile(model.points, 99, axis=0)
        bounds = torch.tensor(np.stack([lo, hi]), dtype=torch.float32)
    scene = Scene(
        images=images,
        cameras=cams,
        masks=masks,
        bounds=bounds,
        background="photo",
        frames=[str(p) for p in paths],
        name=root.name,
        meta={"format": "colmap", "sparse_dir": str(sdir), "num_points": int(len(model.points))},
    )
    return downscale_scene(scene, downscale)


__all__ = ["ColmapModel", "load_colmap", "quat_to_rotmat", "read_colmap_model", "write_colmap_model"]
