"""The field interface and shared encodings.

A field maps world points to density and colour in two calls, so renderers can skip the colour of
samples that do not contribute::

    sigma, aux = field.density(x)          # x (N, 3) world points -> (N,) density, per-sample aux
    rgb = field.color(aux[keep], dirs)     # colour only where needed; dirs (M, 3) unit view directions

Every field has an ``aabb`` (2, 3) buffer (the box it is defined in), ``config()`` returning the
JSON-able constructor arguments, and ``density_activation`` converting raw values to density.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Field(nn.Module):
    """Base class. Subclasses call ``self._init_common(locals())`` first, then implement ``density``/``color``."""

    aabb: Tensor
    _config: dict

    def density(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def color(self, aux: Tensor, dirs: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        sigma, aux = self.density(x)
        return sigma, self.color(aux, dirs)

    def config(self) -> dict:
        return {"type": type(self).__name__, **self._config}

    def _init_common(self, args: dict) -> None:
        """Record the constructor arguments (``locals()`` at the top of ``__init__``) for ``config()`` and
        register the box."""
        self._config = {k: v for k, v in args.items() if k not in ("self", "__class__")}
        aabb = torch.as_tensor(self._config["aabb"], dtype=torch.float32).reshape(2, 3).clone()
        self._config["aabb"] = aabb.tolist()
        self.register_buffer("aabb", aabb)

    def normalize(self, x: Tensor) -> Tensor:
        """World points -> [0, 1]^3 box coordinates."""
        return (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])


def density_shift(init_alpha: float) -> float:
    """Bias so that a raw value of 0 gives opacity ``init_alpha`` over one step (see ``softplus_density``)."""
    return math.log(math.expm1(-math.log(1 - init_alpha)))


def softplus_density(raw: Tensor, shift: float, step: float) -> Tensor:
    """Density in world units from raw values measured per ``step`` (DVGO's parameterisation): one step
    has opacity 1 - exp(-softplus(raw + shift)), so raw values of a few units already make a voxel
    opaque whatever the scene scale -- a world-unit density would need raw values in the hundreds."""
    return F.softplus(raw + shift) / step


def positional_encoding(x: Tensor, n_freqs: int, include_input: bool = True) -> Tensor:
    """NeRF's encoding: [x, sin(2^k pi x), cos(2^k pi x)] for k < n_freqs."""
    freqs = (2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)) * math.pi
    xb = x[..., None, :] * freqs[:, None]
    enc = torch.cat([torch.sin(xb), torch.cos(xb)], -1).flatten(-2)
    return torch.cat([x, enc], -1) if include_input else enc


def sh_encoding(d: Tensor, degree: int = 2) -> Tensor:
    """Real spherical harmonics of unit directions up to ``degree`` (0, 1 or 2): 1, 4 or 9 values."""
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree >= 1:
        out += [-0.4886025119029199 * y, 0.4886025119029199 * z, -0.4886025119029199 * x]
    if degree >= 2:
        out += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.31539156525252005 * (2 * z * z - x * x - y * y),
            -1.0925484305920792 * x * z,
            0.5462742152960396 * (x * x - y * y),
        ]
    return torch.stack(out, -1)


def mlp(d_in: int, width: int, depth: int, d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
        d = width
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)
