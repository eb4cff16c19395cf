"""A set of 3D Gaussians as optimisable parameters, with the activations and initialisations of 3DGS."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .sh import num_sh_bases, rgb_to_sh


def inverse_sigmoid(x: Tensor) -> Tensor:
    return torch.log(x / (1 - x))


@torch.no_grad()
def knn_mean_distance(points: Tensor, k: int = 3, chunk: int = 4096) -> Tensor:
    """Mean distance of each point to its k nearest other points (chunked, exact)."""
    n = len(points)
    if n <= 1:
        return torch.ones(n, dtype=points.dtype, device=points.device)
    k = min(k, n - 1)
    out = torch.empty(n, dtype=points.dtype, device=points.device)
    for i in range(0, n, chunk):
        d = torch.cdist(points[i : i + chunk], points)
        out[i : i + chunk] = d.topk(k + 1, largest=False).values[:, 1:].mean(-1)
    return out


class GaussianModel(nn.Module):
    """Parameters: ``means`` (N,3), ``log_scales`` (N,3), ``quats`` (N,4; w,x,y,z, unnormalised),
    ``opacity_logits`` (N,), ``sh_dc`` (N,1,3) and ``sh_rest`` (N,K-1,3) for SH degree ``max_sh_degree``."""

    PARAMS = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")

    def __init__(self, means: Tensor, log_scales: Tensor, quats: Tensor, opacity_logits: Tensor, sh_dc: Tensor,
                 sh_rest: Tensor, max_sh_degree: int = 3):  # fmt: skip
        super().__init__()
        self.max_sh_degree = max_sh_degree
        self.means = nn.Parameter(means.float().contiguous())
        self.log_scales = nn.Parameter(log_scales.float().contiguous())
        self.quats = nn.Parameter(quats.float().contiguous())
        self.opacity_logits = nn.Parameter(opacity_logits.float().contiguous())
        self.sh_dc = nn.Parameter(sh_dc.float().contiguous())
        self.sh_rest = nn.Parameter(sh_rest.float().contiguous())

    # ------------------------------------------------------------- construction
    @classmethod
    def from_points(
        cls, points: Tensor, colors: Tensor | None = None, max_sh_degree: int = 3, opacity: float = 0.1,
        scale_factor: float = 1.0,
    ) -> GaussianModel:  # fmt: skip
        """Isotropic Gaussians at ``points`` sized by the mean distance to their 3 nearest neighbours."""
        n = len(points)
        points = points.float()
        colors = torch.full((n, 3), 0.5) if colors is None else colors.float().clamp(0, 1)
        dist = knn_mean_distance(points).clamp_min(1e-7) * scale_factor
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1
        return cls(
            points,
            dist.log()[:, None].repeat(1, 3),
            quats,
            inverse_sigmoid(torch.full((n,), opacity)),
            rgb_to_sh(colors)[:, None],
            torch.zeros(n, num_sh_bases(max_sh_degree) - 1, 3),
            max_sh_degree,
        )

    @classmethod
    def random_in_box(cls, n: int, aabb: Tensor, generator: torch.Generator | None = None, **kw) -> GaussianModel:
        lo, hi = aabb[0].float(), aabb[1].float()
        pts = lo + (hi - lo) * torch.rand(n, 3, generator=generator)
        cols = torch.rand(n, 3, generator=generator)
        return cls.from_points(pts, cols, **kw)

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], max_sh_degree: int | None = None) -> GaussianModel:
        k = tensors["sh_rest"].shape[1] + 1
        deg = max_sh_degree if max_sh_degree is not None else int(round(k**0.5)) - 1
        return cls(*(tensors[p] for p in cls.PARAMS), max_sh_degree=deg)

    # -------------------------------------------------------------- activations
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def scales(self) -> Tensor:
        return self.log_scales.exp()

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def sh(self) -> Tensor:
        return torch.cat([self.sh_dc, self.sh_rest], 1)

    @property
    def normalized_quats(self) -> Tensor:
        return F.normalize(self.quats, dim=-1)

    def tensors(self) -> dict[str, Tensor]:
        return {p: getattr(self, p).detach() for p in self.PARAMS}

    def render(self, cam, sh_degree: int | None = None, background=None, backend: str = "auto"):
        from .rasterize import rasterize

        deg = self.max_sh_degree if sh_degree is None else sh_degree
        return rasterize(self.means, self.quats, self.scales, self.opacities, self.sh, cam, deg, background, backend)
