"""LPIPS v0.1 (Zhang et al., CVPR 2018) for AlexNet and VGG16 trunks, without torchvision.

Recipe (both nets share the code path): inputs in [-1, 1] -> per-channel scaling layer -> trunk
-> five ReLU taps -> unit-normalise each tap over channels (eps added to the norm) -> squared
difference -> 1x1 linear layer (no bias) -> spatial mean -> sum over taps.

The weights live in **non-persistent buffers**: they never receive gradients, no optimiser sees
them, and a model that holds an :class:`LPIPS` never writes them into its ``state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lpips_weights import WeightsError, find_lpips_weights, load_checked


@dataclass(frozen=True)
class ConvSpec:
    name: str
    cin: int
    cout: int
    kernel: int
    stride: int = 1
    padding: int = 1


@dataclass(frozen=True)
class Stage:
    """Optional max-pool (kernel, stride), then convs each followed by ReLU; the last ReLU is a tap."""

    pool: tuple[int, int] | None
    convs: tuple[ConvSpec, ...]


def _vgg_block(block: int, cin: int, cout: int, n: int) -> tuple[ConvSpec, ...]:
    return tuple(ConvSpec(f"conv{block}_{i + 1}", cin if i == 0 else cout, cout, 3) for i in range(n))


TRUNKS: dict[str, tuple[Stage, ...]] = {
    # torchvision AlexNet features 0/3/6/8/10 ("one weird trick", 64 channels in conv1).
    "alex": (
        Stage(None, (ConvSpec("conv1", 3, 64, 11, 4, 2),)),
        Stage((3, 2), (ConvSpec("conv2", 64, 192, 5, 1, 2),)),
        Stage((3, 2), (ConvSpec("conv3", 192, 384, 3),)),
        Stage(None, (ConvSpec("conv4", 384, 256, 3),)),
        Stage(None, (ConvSpec("conv5", 256, 256, 3),)),
    ),
    # torchvision VGG16 features; taps after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3.
    "vgg": (
        Stage(None, _vgg_block(1, 3, 64, 2)),
        Stage((2, 2), _vgg_block(2, 64, 128, 2)),
        Stage((2, 2), _vgg_block(3, 128, 256, 3)),
        Stage((2, 2), _vgg_block(4, 256, 512, 3)),
        Stage((2, 2), _vgg_block(5, 512, 512, 3)),
    ),
}

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def expected_shapes(net: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a complete LPIPS weight file for ``net``."""
    if net not in TRUNKS:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {sorted(TRUNKS)}")
    shapes: dict[str, tuple[int, ...]] = {}
    for k, stage in enumerate(TRUNKS[net]):
        for c in stage.convs:
            shapes[f"{c.name}.weight"] = (c.cout, c.cin, c.kernel, c.kernel)
            shapes[f"{c.name}.bias"] = (c.cout,)
        shapes[f"lin{k + 1}.weight"] = (1, stage.convs[-1].cout, 1, 1)
    return shapes


def _normalize(f: Tensor, eps: float = 1e-10) -> Tensor:
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS distance. ``forward(x, y)`` takes (N, 3, H, W) RGB images **in [0, 1]** and returns (N,).

    Args:
        net: "alex" (the standard metric) or "vgg".
        weights: a safetensors file or a folder holding ``lpips_<net>_v0.1.safetensors``; when ``None``
            the ``FEWVIEW_LPIPS_WEIGHTS`` environment variable, then the user cache are searched.
    """

    def __init__(self, net: str = "alex", weights: str | Path | None = None):
        super().__init__()
        shapes = expected_shapes(net)  # raises for an unknown net
        self.net = net
        self.trunk = TRUNKS[net]
        self.weights_path = find_lpips_weights(net, weights)
        tensors = load_checked(self.weights_path, shapes)
        for name, t in tensors.items():
            self.register_buffer(name.replace(".", "_"), t, persistent=False)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def _w(self, name: str) -> Tensor:
        return getattr(self, name.replace(".", "_"))

    def features(self, x: Tensor) -> list[Tensor]:
        """The five ReLU taps for inputs already in [-1, 1]."""
        x = (x - self.shift) / self.scale
        taps = []
        for stage in self.trunk:
            if stage.pool is not None:
                x = F.max_pool2d(x, stage.pool[0], stage.pool[1])
            for c in stage.convs:
                x = F.relu(F.conv2d(x, self._w(f"{c.name}.weight"), self._w(f"{c.name}.bias"), c.stride, c.padding))
            taps.append(x)
        return taps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two (N, 3, H, W) images of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"LPIPS needs images of at least 32x32 pixels, got {x.shape[-1]}x{x.shape[-2]}")
        n = x.shape[0]
        both = torch.cat([x, y]).to(self.shift.dtype) * 2 - 1
        total = torch.zeros(n, dtype=both.dtype, device=both.device)
        for k, f in enumerate(self.features(both)):
            d = (_normalize(f[:n]) - _normalize(f[n:])).pow(2)
            total = total + F.conv2d(d, self._w(f"lin{k + 1}.weight")).mean(dim=(1, 2, 3))
        return total

    @torch.no_grad()
    def metric(self, x: Tensor, y: Tensor, batch_size: int = 16) -> Tensor:
        """Per-image distances (N,) without gradients, in batches."""
        return torch.cat([self(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)])


class PerceptualLoss(nn.Module):
    """Mean LPIPS between renders and targets (both in [0, 1]) as a differentiable loss.

    The LPIPS network is built on first use, so configs can hold a ``PerceptualLoss`` cheaply, and
    its frozen weights never appear in the owner's ``state_dict``.
    """

    def __init__(self, net: str = "alex", weights: str | Path | None = None):
        super().__init__()
        self._spec = (net, weights)
        self._lpips: list[LPIPS] = []  # a plain list keeps it out of the module tree

    @property
    def lpips(self) -> LPIPS:
        if not self._lpips:
            self._lpips.append(LPIPS(*self._spec))
        return self._lpips[0]

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        m = self.lpips.to(x.device)
        return m(x, y).mean()


_CACHE: dict[tuple[str, str], LPIPS] = {}


def lpips_metric(x: Tensor, y: Tensor, net: str = "alex", weights: str | Path | None = None) -> Tensor:
    """Per-image LPIPS (N,) for images in [0, 1]; the network is loaded once per (net, weights file)."""
    path = find_lpips_weights(net, weights)
    key = (net, str(path))
    if key not in _CACHE:
        _CACHE[key] = LPIPS(net, path)
    return _CACHE[key].to(x.device).metric(x, y)


__all__ = ["LPIPS", "PerceptualLoss", "WeightsError", "expected_shapes", "lpips_metric"]
