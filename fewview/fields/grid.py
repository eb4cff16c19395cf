"""Direct voxel grids (DVGO-style): a density grid and a feature grid decoded by a small colour MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Field, density_shift, mlp, sh_encoding, softplus_density
from .interp import trilinear


class DenseGridField(Field):
    """Density and colour features stored at the vertices of a res^3 grid over ``aabb``.

    Args:
        aabb: (2, 3) box (min, max) in world units.
        resolution: vertices per axis (can grow during a fit with :meth:`upsample`).
        feature_dim: colour features per vertex.
        width: colour MLP width (two hidden layers).
        sh_degree: view-direction encoding (0 disables view dependence).
        init_alpha: opacity of one ``step`` at initialisation.
        step: the render step (world units) ``init_alpha`` refers to.
    """

    def __init__(
        self,
        aabb,
        resolution: int = 64,
        feature_dim: int = 12,
        width: int = 64,
        sh_degree: int = 2,
        init_alpha: float = 1e-2,
        step: float = 0.01,
    ):
        super().__init__()
        self._init_common(locals())
        self.res = resolution
        self.shift, self.step = density_shift(init_alpha), step
        self.sh_degree = sh_degree
        self.density_grid = nn.Parameter(torch.zeros(resolution**3, 1))
        self.feature_grid = nn.Parameter(torch.randn(resolution**3, feature_dim) * 0.1)
        n_dir = (sh_degree + 1) ** 2 if sh_degree > 0 else 0
        self.rgb_net = mlp(feature_dim + n_dir, width, 2, 3)

    def density(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raw = trilinear(self.density_grid, self.res, self.normalize(x))[:, 0]
        return softplus_density(raw, self.shift, self.step), x

    def color(self, aux: Tensor, dirs: Tensor) -> Tensor:
        f = trilinear(self.feature_grid, self.res, self.normalize(aux))
        if self.sh_degree > 0:
            f = torch.cat([f, sh_encoding(dirs, self.sh_degree)], -1)
        return torch.sigmoid(self.rgb_net(f))

    @torch.no_grad()
    def upsample(self, resolution: int) -> None:
        """Trilinearly resample both grids to ``resolution`` vertices per axis (new Parameters)."""

        def resample(table: Tensor) -> Tensor:
            c = table.shape[1]
            vol = table.reshape(self.res, self.res, self.res, c).permute(3, 0, 1, 2)[None]
            vol = F.interpolate(vol, size=(resolution,) * 3, mode="trilinear", align_corners=True)
            # Row-major strides even for c = 1, as a checkpoint loads them: a (N, 1) view with stride (1, N) makes
            # some kernels reduce in another order, so a resumed fit would drift from an uninterrupted one.
            return torch.empty(resolution**3, c, dtype=table.dtype, device=table.device).copy_(
                vol[0].permute(1, 2, 3, 0).reshape(-1, c)
            )

        self.density_grid = nn.Parameter(resample(self.density_grid.data))
        self.feature_grid = nn.Parameter(resample(self.feature_grid.data))
        self.res = resolution
        self._config["resolution"] = resolution

    def total_variation(self, n: int = 4096, generator=None) -> Tensor:
        """Mean squared difference between random vertices' density and their +x/+y/+z neighbours."""
        r = self.res
        gdev = generator.device if generator is not None else self.density_grid.device
        idx = torch.randint(0, r - 1, (n, 3), generator=generator, device=gdev).to(self.density_grid.device)
        flat = (idx[:, 0] * r + idx[:, 1]) * r + idx[:, 2]
        d = self.density_grid[:, 0]
        c = d[flat]
        return ((d[flat + r * r] - c) ** 2 + (d[flat + r] - c) ** 2 + (d[flat + 1] - c) ** 2).mean()
