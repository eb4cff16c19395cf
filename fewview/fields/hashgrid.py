"""Multiresolution hash encoding (Instant-NGP) in plain PyTorch, with small density/colour MLPs."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Field, density_shift, mlp, sh_encoding, softplus_density
from .interp import corner_weights, gather_interp

_PRIMES = (1, 2654435761, 805459861)


def _level_indices(u: Tensor, res: int, table_size: int) -> tuple[Tensor, Tensor]:
    """Corner rows (N, 8) and weights (N, 8) at one level: direct indexing while res^3 fits the table,
    else Instant-NGP's spatial hash (xor of coordinates times primes, modulo the table size)."""
    idx, w = corner_weights(u, res)
    if res**3 <= table_size:
        return idx, w
    r2 = res * res
    x, y, z = idx // r2, (idx // res) % res, idx % res
    h = (x * _PRIMES[0]) ^ (y * _PRIMES[1]) ^ (z * _PRIMES[2])
    return h % table_size, w


class HashGridField(Field):
    """Instant-NGP-style field: ``levels`` hash tables of ``2**log2_table`` x ``features`` entries with
    resolutions growing geometrically from ``base_res`` to ``max_res``; density from a 1-hidden-layer MLP,
    colour from its geometry features and SH-encoded view direction."""

    def __init__(
        self,
        aabb,
        levels: int = 16,
        features: int = 2,
        log2_table: int = 19,
        base_res: int = 16,
        max_res: int = 1024,
        width: int = 64,
        geo_dim: int = 15,
        sh_degree: int = 2,
        init_alpha: float = 1e-2,
        step: float = 0.01,
    ):
        super().__init__()
        self._init_common(locals())
        growth = math.exp((math.log(max_res) - math.log(base_res)) / max(levels - 1, 1))
        self.resolutions = [int(math.floor(base_res * growth**i)) for i in range(levels)]
        self.table_size = 2**log2_table
        self.sizes = [min(r**3, self.table_size) for r in self.resolutions]
        self.tables = nn.Parameter(torch.empty(sum(self.sizes), features).uniform_(-1e-4, 1e-4))
        self.offsets = [0, *torch.tensor(self.sizes).cumsum(0).tolist()[:-1]]
        self.shift, self.step = density_shift(init_alpha), step
        self.sh_degree = sh_degree
        self.density_net = mlp(levels * features, width, 1, 1 + geo_dim)
        self.rgb_net = mlp(geo_dim + (sh_degree + 1) ** 2, width, 2, 3)

    def encode(self, x: Tensor) -> Tensor:
        u = self.normalize(x)
        idx, ws = [], []
        for res, size, off in zip(self.resolutions, self.sizes, self.offsets, strict=True):
            i, w = _level_indices(u, res, size)
            idx.append(i + off)
            ws.append(w)
        # One fused gather for all levels: (N * L, 8) bags over the concatenated tables.
        n, levels = x.shape[0], len(self.resolutions)
        idx_t = torch.stack(idx, 1).reshape(n * levels, 8)
        w_t = torch.stack(ws, 1).reshape(n * levels, 8).to(self.tables.dtype)
        return gather_interp(self.tables, idx_t, w_t).reshape(n, -1)

    def density(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.density_net(self.encode(x))
        return softplus_density(h[:, 0], self.shift, self.step), h[:, 1:]

    def color(self, aux: Tensor, dirs: Tensor) -> Tensor:
        return torch.sigmoid(self.rgb_net(torch.cat([aux, sh_encoding(dirs, self.sh_degree)], -1)))
