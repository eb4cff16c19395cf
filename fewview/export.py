"""Exports: marching-cubes meshes with vertex colours (PLY, OBJ, GLB), coloured point clouds (PLY),
turntable videos (MP4, GIF)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .cameras import Cameras, nearest_point_to_axes, orbit, orbit_basis
from .fields import Field

MESH_FORMATS = (".ply", ".obj", ".glb")


class ExportError(ValueError):
    """Nothing to export (an empty field) or an unsupported format."""


def lattice_points(aabb: Tensor, resolution: int) -> Tensor:
    """(R^3, 3) points of a vertex-aligned resolution^3 lattice spanning the box, x slowest."""
    lin = [torch.linspace(float(aabb[0, i]), float(aabb[1, i]), resolution) for i in range(3)]
    return torch.stack(torch.meshgrid(*lin, indexing="ij"), -1).reshape(-1, 3)


@torch.no_grad()
def density_volume(field: Field, resolution: int = 192, chunk: int = 1 << 18) -> tuple[np.ndarray, Tensor]:
    """Density sampled on a resolution^3 lattice spanning the field's box (vertex-aligned). Returns the
    (R, R, R) array indexed [x, y, z] and the box."""
    aabb = field.aabb.float().cpu()
    pts = lattice_points(aabb, resolution)
    dev = field.aabb.device
    sig = torch.cat([field.density(pts[i : i + chunk].to(dev))[0].float().cpu() for i in range(0, len(pts), chunk)])
    return sig.reshape(resolution, resolution, resolution).numpy(), aabb


def density_level(step: float, alpha: float = 0.5) -> float:
    """The density at which one march step reaches opacity ``alpha`` (the default iso-level)."""
    return -math.log(1 - alpha) / step


@torch.no_grad()
def silhouette_level(
    field: Field,
    render: Callable[[Cameras], dict[str, Tensor]],
    cams: Cameras,
    resolution: int = 128,
    size: int = 64,
    min_opacity: float = 0.5,
    n_levels: int = 48,
) -> tuple[float, float]:
    """The density iso-level whose inside, seen from ``cams``, best covers where the field's own renders reach
    ``min_opacity``: the mean silhouette IoU over the cameras, at most ``size`` pixels a side, is highest.

    A lattice point projects into a pixel; the pixel is inside at level L when the largest density projecting there
    exceeds L, so the match holds to about half a pixel. Levels are log-spaced from 1e-3 to 0.95 of the largest
    density. Returns (level, IoU). A diffuse
    field (a prior's distillation, few steps) never reaches the opacity-per-step level of :func:`density_level`
    anywhere, yet renders a clear silhouette: this level follows the silhouette.
    """
    vol, aabb = density_volume(field, resolution)
    dens = torch.from_numpy(vol.reshape(-1)).double()
    top = float(dens.max())
    if not top > 0:
        raise ExportError("the field has no density anywhere: nothing to mesh")
    levels = torch.logspace(math.log10(top * 1e-3), math.log10(top * 0.95), n_levels, dtype=torch.float64)
    pts = lattice_points(aabb, resolution)
    inter = torch.zeros(n_levels, dtype=torch.float64)
    union = torch.zeros(n_levels, dtype=torch.float64)
    opaque = 0
    for i in range(len(cams)):
        h, w = int(cams.size[i, 0]), int(cams.size[i, 1])
        s = min(1.0, size / max(h, w))
        hs, ws = max(round(h * s), 1), max(round(w * s), 1)
        small = cams[i].resize(hs, ws)
        target = (render(small)["opacity"].reshape(-1).float().cpu() > min_opacity)[None]
        opaque += int(target.sum())
        uv, z = small.to(torch.float32).project(pts)
        x, y = uv[0, :, 0].floor().long(), uv[0, :, 1].floor().long()
        ok = (z[0] > 0) & (x >= 0) & (x < ws) & (y >= 0) & (y < hs)
        peak = torch.zeros(hs * ws, dtype=torch.float64).scatter_reduce(0, (y * ws + x)[ok], dens[ok], "amax")
        inside = peak[None] > levels[:, None]
        inter += (inside & target).sum(1)
        union += (inside | target).sum(1)
    if opaque == 0:
        raise ExportError(f"no pixel reaches opacity {min_opacity} in the cameras: the field is empty")
    iou = inter / union.clamp_min(1)
    k = int(iou.argmax())
    return float(levels[k]), float(iou[k])


@torch.no_grad()
def extract_mesh(field: Field, resolution: int = 192, level: float | None = None, step: float | None = None):
    """Marching cubes on the density, vertex colours from the field seen from outside (along -normal).

    Returns a ``trimesh.Trimesh`` (world units). ``level`` defaults to ``density_level(step)``.
    """
    import mcubes
    import trimesh

    vol, aabb = density_volume(field, resolution)
    if level is None:
        level = density_level(step if step is not None else float((aabb[1] - aabb[0]).max()) / resolution)
    if not (vol.max() > level > vol.min()):
        raise ExportError(
            f"the density never crosses the iso-level {level:.3g} (range {vol.min():.3g}..{vol.max():.3g}); "
            "train longer or pass --level"
        )
    verts, faces = mcubes.marching_cubes(vol, level)
    scale = (aabb[1] - aabb[0]).numpy() / (resolution - 1)
    verts = verts * scale + aabb[0].numpy()
    # Density rises inwards, and mcubes winds triangles so that normals point to lower values: outwards.
    mesh = trimesh.Trimesh(verts, faces, process=False)
    normals = torch.from_numpy(np.asarray(mesh.vertex_normals, dtype=np.float32))
    v = torch.from_numpy(verts.astype(np.float32))
    dev = field.aabb.device
    cols = []
    for i in range(0, len(v), 1 << 16):
        p = v[i : i + 1 << 16].to(dev)
        n = normals[i : i + 1 << 16].to(dev)
        _, aux = field.density(p)
        cols.append(field.color(aux, -n).float().cpu())
    rgb = torch.cat(cols) if cols else torch.zeros(0, 3)
    mesh.visual.vertex_colors = np.concatenate(
        [(rgb.clamp(0, 1).numpy() * 255).astype(np.uint8), np.full((len(rgb), 1), 255, np.uint8)], 1
    )
    return mesh


def save_mesh(mesh, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in MESH_FORMATS:
        raise ExportError(f"{path}: mesh format must be one of {MESH_FORMATS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path)
    return path


@torch.no_grad()
def point_cloud(
    render: Callable[[Cameras], dict[str, Tensor]], cams: Cameras, min_opacity: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Points (P, 3) and colours (P, 3) from the rendered depth of each camera, where opaque."""
    pts, cols = [], []
    for i in range(len(cams)):
        r = render(cams[i])
        h, w = r["depth"].shape[-2:]
        keep = (r["opacity"][0] > min_opacity) & (r["depth"][0] > 0)
        ys, xs = keep.nonzero(as_tuple=True)
        uv = torch.stack([xs.float() + 0.5, ys.float() + 0.5], -1)[None]
        z = r["depth"][0][keep][None]
        cam = cams[i].to(torch.float32)
        pts.append(cam.unproject(uv, z)[0])
        cols.append(r["rgb"][:, keep].T)
    if sum(len(p) for p in pts) == 0:
        raise ExportError(f"no pixel reaches opacity {min_opacity} in the input views: the field is empty")
    return torch.cat(pts), torch.cat(cols)


def save_point_cloud(points: Tensor, colors: Tensor, path: str | Path) -> Path:
    import trimesh

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgba = np.concatenate(
        [(colors.clamp(0, 1).numpy() * 255).astype(np.uint8), np.full((len(colors), 1), 255, np.uint8)], 1
    )
    trimesh.PointCloud(points.numpy(), colors=rgba).export(path)
    return path


def turntable_cameras(inputs: Cameras, n: int = 60, height: int | None = None, width: int | None = None) -> Cameras:
    """An orbit around the point the input cameras look at, at their mean distance and elevation,
    about their mean "up" direction; intrinsics of input 0 (rescaled to ``height`` x ``width``)."""
    cams = inputs.to(torch.float64)
    up = torch.nn.functional.normalize(-cams.R[:, :, 1].mean(0), dim=0)
    center = nearest_point_to_axes(cams) if len(cams) > 1 else cams.centers[0] + 4.0 * cams.R[0, :, 2]
    rel = cams.centers - center
    radius = float(rel.norm(dim=-1).mean())
    elev = float(torch.rad2deg(torch.asin((rel @ up / rel.norm(dim=-1)).clamp(-1, 1))).mean())
    a, b = orbit_basis(up)
    az0 = math.degrees(math.atan2(float(rel[0] @ b), float(rel[0] @ a)))  # start at input 0's azimuth
    out = orbit(
        n, radius, elev, cams.K[0], int(cams.size[0, 0]), int(cams.size[0, 1]), center.tolist(), up.tolist(), az0
    )
    if height is not None and width is not None:
        out = out.resize(height, width)
    return out


def write_video(frames: list[np.ndarray], path: str | Path, fps: int = 20) -> Path:
    """Write (H, W, 3) uint8 frames as MP4 (imageio-ffmpeg) or GIF (Pillow), by suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        ims = [Image.fromarray(f) for f in frames]
        ims[0].save(path, save_all=True, append_images=ims[1:], duration=int(1000 / fps), loop=0)
    elif path.suffix.lower() == ".mp4":
        import imageio.v2 as imageio

        # yuv420p needs even sizes; pad by edge replication if necessary.
        h, w = frames[0].shape[:2]
        pad = ((0, h % 2), (0, w % 2), (0, 0))
        with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1) as wr:
            for f in frames:
                wr.append_data(np.pad(f, pad, mode="edge"))
    else:
        raise ExportError(f"{path}: video format must be .mp4 or .gif")
    return path


__all__ = [
    "density_volume",
    "extract_mesh",
    "point_cloud",
    "save_mesh",
    "save_point_cloud",
    "turntable_cameras",
    "write_video",
]
