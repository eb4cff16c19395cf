"""Geometry metrics: Chamfer distance between point sets (e.g. mesh samples or point clouds)."""

from __future__ import annotations

import torch
from torch import Tensor


def nearest_distances(a: Tensor, b: Tensor, chunk: int = 4096) -> Tensor:
    """(N,) Euclidean distance from each point of ``a`` (N, 3) to its nearest point in ``b`` (M, 3)."""
    if len(b) == 0:
        raise ValueError("nearest_distances: the second point set is empty")
    exact = "donot_use_mm_for_euclid_dist"  # the matmul shortcut loses precision near zero
    return torch.cat(
        [torch.cdist(a[i : i + chunk], b, compute_mode=exact).amin(dim=1) for i in range(0, len(a), chunk)]
    )


def chamfer_distance(a: Tensor, b: Tensor, squared: bool = False) -> dict[str, float]:
    """Symmetric Chamfer distance: mean nearest-neighbour distance a->b plus b->a.

    Returns ``{"chamfer": d_ab + d_ba, "accuracy": d_ab, "completeness": d_ba}`` (DTU's naming:
    accuracy measures a against b, completeness b against a); ``squared`` averages squared distances.
    """
    a, b = a.double(), b.double()
    dab, dba = nearest_distances(a, b), nearest_distances(b, a)
    if squared:
        dab, dba = dab**2, dba**2
    return {"chamfer": float(dab.mean() + dba.mean()), "accuracy": float(dab.mean()), "completeness": float(dba.mean())}


def sample_mesh_surface(mesh, n: int, seed: int = 0) -> Tensor:
    """(n, 3) points sampled uniformly on a trimesh surface (area-weighted)."""
    import trimesh

    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return torch.from_numpy(pts)
