"""Tiny fixtures: an analytic sphere rendered through cameras, written in real on-disk formats."""

from __future__ import annotations

import gzip
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewview.cameras import Cameras, camera_rays, intrinsics_matrix, orbit

SPHERE_CENTER = torch.tensor([0.1, -0.05, 0.2], dtype=torch.float64)
SPHERE_RADIUS = 0.6


def sphere_mask(cams: Cameras, center=SPHERE_CENTER, radius=SPHERE_RADIUS) -> torch.Tensor:
    """(B, H, W) bool: which pixel-centre rays hit the sphere (analytic ray/sphere test)."""
    rays = camera_rays(cams, dtype=torch.float64)
    oc = rays.origins - center
    b = (oc * rays.directions).sum(-1)
    c = (oc * oc).sum(-1) - radius**2
    return (b * b - c) > 0


def sphere_images(cams: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB images (B, H, W, 3) with a coloured sphere on grey, and uint8 masks (B, H, W)."""
    m = sphere_mask(cams).numpy()
    rgb = np.full((*m.shape, 3), 60, dtype=np.uint8)
    rgb[m] = (200, 120, 40)
    return rgb, (m * 255).astype(np.uint8)


def make_cams(n=6, h=40, w=48, radius=3.0, elevation=25.0, f=50.0) -> Cameras:
    K = intrinsics_matrix(f, f * 1.02, w / 2 + 1.3, h / 2 - 0.7)
    return orbit(n, radius, elevation, K, h, w, center=SPHERE_CENTER.tolist(), up=(0, 0, 1))


def save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float((a & b).sum()) / max(1, int((a | b).sum()))


# ------------------------------------------------------------------- writers
def write_blender(root: Path, cams: Cameras, split="train", nerfstudio=False) -> Path:
    from fewview.cameras.convert import to_opengl

    rgb, mask = sphere_images(cams)
    frames = []
    gl = to_opengl(cams)
    for i in range(len(cams)):
        rgba = np.concatenate([rgb[i], mask[i][..., None]], -1)
        name = f"{split}/r_{i}"
        save_png(root / f"{name}.png", rgba)
        fr = {"file_path": f"./{name}" if not nerfstudio else f"{name}.png", "transform_matrix": gl[i].tolist()}
        if nerfstudio:
            K = cams.K[i].double()
            fr.update(
                fl_x=float(K[0, 0]),
                fl_y=float(K[1, 1]),
                cx=float(K[0, 2]),
                cy=float(K[1, 2]),
                w=cams.width,
                h=cams.height,
            )
        frames.append(fr)
    meta = {"frames": frames}
    if not nerfstudio:
        meta["camera_angle_x"] = float(cams.fov_x[0])
    path = root / ("transforms.json" if nerfstudio else f"transforms_{split}.json")
    path.write_text(json.dumps(meta))
    return path


def write_llff(root: Path, cams: Cameras, with_masks=True) -> None:
    from fewview.data.llff import write_llff_poses

    rgb, mask = sphere_images(cams)
    for i in range(len(cams)):
        save_png(root / "images" / f"IMG_{i:04d}.png", rgb[i])
        if with_masks:
            save_png(root / "masks" / f"IMG_{i:04d}.png", mask[i])
    write_llff_poses(root / "poses_bounds.npy", cams, torch.tensor([[1.0, 6.0]] * len(cams)))


def write_colmap(root: Path, cams: Cameras, binary=True) -> None:
    from fewview.data.colmap import write_colmap_model

    rgb, _ = sphere_images(cams)
    names = [f"frame_{i:03d}.png" for i in range(len(cams))]
    for i, n in enumerate(names):
        save_png(root / "images" / n, rgb[i])
    pts = np.random.default_rng(0).normal(size=(20, 3)) * 0.3
    write_colmap_model(root / "sparse" / "0", cams, names, binary=binary, points=pts)


def write_dtu(root: Path, cams: Cameras, scale=0.37, offset=(0.3, -0.2, 0.5)) -> torch.Tensor:
    """IDR layout; the world frame is the normalised frame scaled by ``scale`` and shifted by ``offset``.

    Returns the scale matrix (normalised -> world)."""
    from fewview.cameras.convert import to_dtu

    rgb, mask = sphere_images(cams)
    sm = torch.eye(4, dtype=torch.float64)
    sm[:3, :3] *= 1 / scale
    sm[:3, 3] = torch.tensor(offset)
    wm = to_dtu(cams)  # world_mat projects world points; P = world_mat @ scale_mat projects normalised ones
    data = {}
    for i in range(len(cams)):
        save_png(root / "image" / f"{i:06d}.png", rgb[i])
        save_png(root / "mask" / f"{i:03d}.png", mask[i])
        data[f"world_mat_{i}"] = wm[i].numpy()
        data[f"scale_mat_{i}"] = sm.numpy()
    np.savez(root / "cameras.npz", **data)
    return sm


def write_co3d(root: Path, cams: Cameras, category="hydrant", sequence="42_1234_5678", fmt="ndc_isotropic") -> None:
    from fewview.cameras.convert import to_pytorch3d

    rgb, mask = sphere_images(cams)
    R, T, f, p, hw = to_pytorch3d(cams)
    if fmt == "ndc_norm_image_bounds":  # convert isotropic NDC to per-axis image-bounds NDC
        half_min = hw.double().min(1, keepdim=True).values / 2
        half_wh = hw.double().flip(1) / 2
        f, p = f * half_min / half_wh, p * half_min / half_wh
    frames = []
    for i in range(len(cams)):
        img_rel = f"{category}/{sequence}/images/frame{i + 1:06d}.jpg.png"
        mask_rel = f"{category}/{sequence}/masks/frame{i + 1:06d}.png"
        save_png(root / img_rel, rgb[i])
        save_png(root / mask_rel, mask[i])
        depth_rel = f"{category}/{sequence}/depths/frame{i + 1:06d}.jpg.geometric.png"
        depth = np.full(mask[i].shape, 2.5, dtype=np.float16)
        save_png(root / depth_rel, depth.view(np.uint16))
        frames.append(
            {
                "sequence_name": sequence,
                "frame_number": i + 1,
                "frame_timestamp": float(i) / 10,
                "image": {"path": img_rel, "size": [int(hw[i, 0]), int(hw[i, 1])]},
                "depth": {"path": depth_rel, "scale_adjustment": 2.0, "mask_path": None},
                "mask": {"path": mask_rel, "mass": float(mask[i].sum())},
                "viewpoint": {
                    "R": R[i].tolist(),
                    "T": T[i].tolist(),
                    "focal_length": f[i].tolist(),
                    "principal_point": p[i].tolist(),
                    "intrinsics_format": fmt,
                },
                "meta": {},
            }
        )
    cdir = root / category
    (cdir / "set_lists").mkdir(parents=True, exist_ok=True)
    (cdir / "frame_annotations.jgz").write_bytes(gzip.compress(json.dumps(frames[::-1]).encode()))
    seqs = [{"sequence_name": sequence, "category": category, "viewpoint_quality_score": 0.9}]
    (cdir / "sequence_annotations.jgz").write_bytes(gzip.compress(json.dumps(seqs).encode()))
    rows = [[sequence, i + 1, frames[i]["image"]["path"]] for i in range(len(cams))]
    (cdir / "set_lists" / "set_lists_fewview_dev.json").write_text(
        json.dumps({"train": rows[:2], "val": [], "test": rows})
    )


def free_port() -> int:
    """A free loopback TCP port (for torchrun rendezvous in tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_weight_gap(args: list[str], out: Path) -> float:
    """Run ``fewview ARGS`` once in-process and once as 2 torchrun processes (1 thread each); return the largest
    difference between the two checkpoints' weights."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from fewview.cli import main

    assert main([*args, "--out", str(out / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "fewview", *args, "--out", str(out / "two")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = load_file(out / "one" / "checkpoint" / "model.safetensors")
    b = load_file(out / "two" / "checkpoint" / "model.safetensors")
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def depth_points(rgba: np.ndarray, depth: np.ndarray, cams: Cameras) -> torch.Tensor:
    """World points (P, 3) of every fully covered pixel with depth, unprojected from renders (V, H, W, 4) and
    z-depths (V, H, W) through their cameras."""
    pts = []
    for v in range(len(cams)):
        full = (rgba[v, ..., 3] == 255) & (depth[v] > 0)
        ys, xs = np.nonzero(full)
        uv = torch.tensor(np.stack([xs + 0.5, ys + 0.5], 1), dtype=torch.float64)[None]
        z = torch.tensor(depth[v][full], dtype=torch.float64)[None]
        pts.append(cams[v].to(torch.float64).unproject(uv, z)[0])
    return torch.cat(pts)


def noise_texture(rng: np.random.Generator, n: int = 512) -> np.ndarray:
    """(n, n, 3) float32 smooth multi-octave colour noise: distinctive blobs that SIFT can match."""
    import torch.nn.functional as F

    t = torch.zeros(1, 3, n, n)
    for s, w in ((8, 1.0), (16, 0.8), (32, 0.6), (64, 0.5), (128, 0.3)):
        c = torch.from_numpy(rng.uniform(-1, 1, (1, 3, s, s))).float()
        t += w * F.interpolate(c, size=(n, n), mode="bicubic", align_corners=False)
    t = (t - t.mean()) / t.std() * 0.22 + 0.5
    return t[0].permute(1, 2, 0).clamp(0, 1).numpy()


def textured_box_scene(n: int = 20, h: int = 240, w: int = 320, seed: int = 0):
    """A noise-textured cube on a textured floor seen by ``n`` cameras on two rings around it.

    Returns (cameras, RGB uint8 (n, h, w, 3) on white, masks uint8 (n, h, w) of the cube and floor)."""
    from fewview.cameras import look_at
    from fewview.objects.builder import render_object
    from fewview.objects.household import HouseholdObject, Lighting, SurfaceMaterial, TexturedMesh

    def quads_box(lo, hi):
        (x0, y0, z0), (x1, y1, z1) = lo, hi
        return [[(x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0)],
                [(x0, y0, z1), (x1, y0, z1), (x1, y1, z1), (x0, y1, z1)],
                [(x0, y0, z0), (x1, y0, z0), (x1, y0, z1), (x0, y0, z1)],
                [(x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)],
                [(x0, y0, z0), (x0, y1, z0), (x0, y1, z1), (x0, y0, z1)],
                [(x1, y0, z0), (x1, y1, z0), (x1, y1, z1), (x1, y0, z1)]]  # fmt: skip

    quads = quads_box((-0.5, -0.5, 0.0), (0.5, 0.5, 1.0)) + [[(-2, -2, 0), (2, -2, 0), (2, 2, 0), (-2, 2, 0)]]
    corner_uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    verts, faces, uv, mat = [], [], [], []
    for qi, q in enumerate(quads):
        b = len(verts)
        verts += q
        faces += [[b, b + 1, b + 2], [b, b + 2, b + 3]]
        uv += [corner_uv[[0, 1, 2]], corner_uv[[0, 2, 3]]]
        mat += [qi, qi]
    v, f = np.array(verts, float), np.array(faces)
    nrm = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    mats = [SurfaceMaterial(f"m{i}", np.ones(3), noise_texture(rng)) for i in range(len(quads))]
    mesh = TexturedMesh(v, f, np.array(uv), np.repeat(nrm[:, None], 3, 1).astype(np.float32),
                        np.array(mat, np.int32), mats)  # fmt: skip
    obj = HouseholdObject("box", mesh, Lighting(smooth=False))
    az = np.linspace(0, 2 * np.pi, n, endpoint=False)
    el = np.where(np.arange(n) % 2 == 0, 0.45, 0.7)
    eye = torch.from_numpy(np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], 1) * 3.5)
    c2w = look_at(eye, torch.tensor([0.0, 0.0, 0.4], dtype=torch.float64).expand(n, 3),
                  torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(n, 3))  # fmt: skip
    fpx = 0.5 * w / np.tan(np.radians(50) / 2)
    cams = Cameras(c2w.float(), intrinsics_matrix(fpx, fpx, w / 2, h / 2).float().expand(n, 3, 3).clone(),
                   torch.tensor([h, w]))  # fmt: skip
    rgba, _ = render_object(obj, cams, supersample=2)
    a = rgba[..., 3:].astype(np.float32) / 255
    rgb = np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)
    return cams, rgb, rgba[..., 3]


def similarity_align(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: (s, R, t) minimising |s R src + t - dst|^2 over points (N, 3)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.eye(3)
    d[2, 2] = np.sign(np.linalg.det(u @ vt))
    r = u @ d @ vt
    s = float((sig * np.diag(d)).sum() / (a**2).sum(1).mean())
    return s, r, md - s * r @ ms


def chromium_driver(chromium: str, chromedriver: str, width: int = 800, height: int = 600):
    """Headless Chromium under selenium with software WebGL (SwiftShader), for viewer pages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader",
              "--enable-unsafe-swiftshader", "--hide-scrollbars", f"--window-size={width},{height}"):  # fmt: skip
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(chromedriver), options=opts)


class Killed(Exception):
    """Raised by :func:`kill_at` to stop a run as a killed process stops."""


def kill_at(runner, step: int) -> None:
    """Run ``runner`` (a fit or a trainer: ``run(progress, callback)``) and stop it once it reaches ``step``; what it
    checkpointed before stays on disk for a resumed run."""

    def stop(r):
        if r.step == step:
            raise Killed

    with pytest.raises(Killed):
        runner.run(progress=False, callback=stop)
