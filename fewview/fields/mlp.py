"""The original NeRF MLP (positional encoding, 8x256 with a skip), the slow baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Field, positional_encoding


class MLPField(Field):
    """NeRF (Mildenhall et al. 2020): PE(x, 10 freqs) -> 8 x ``width`` ReLU layers with a skip at layer 4
    -> density and a feature -> PE(d, 4 freqs) -> ``width // 2`` -> RGB."""

    def __init__(self, aabb, width: int = 256, depth: int = 8, pos_freqs: int = 10, dir_freqs: int = 4):
        super().__init__()
        self._init_common(locals())
        self.pos_freqs, self.dir_freqs, self.skip = pos_freqs, dir_freqs, depth // 2
        d_in = 3 + 6 * pos_freqs
        layers = []
        for i in range(depth):
            cin = d_in if i == 0 else width + (d_in if i == self.skip else 0)
            layers.append(nn.Linear(cin, width))
        self.layers = nn.ModuleList(layers)
        self.sigma_head = nn.Linear(width, 1)
        self.feature = nn.Linear(width, width)
        self.rgb1 = nn.Linear(width + 3 + 6 * dir_freqs, width // 2)
        self.rgb2 = nn.Linear(width // 2, 3)

    def density(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # Encode box coordinates in [-1, 1] so the frequencies mean the same for any scene scale.
        e = positional_encoding(self.normalize(x) * 2 - 1, self.pos_freqs)
        h = e
        for i, layer in enumerate(self.layers):
            if i == self.skip:
                h = torch.cat([h, e], -1)
            h = F.relu(layer(h))
        return F.relu(self.sigma_head(h)[:, 0]), self.feature(h)

    def color(self, aux: Tensor, dirs: Tensor) -> Tensor:
        h = F.relu(self.rgb1(torch.cat([aux, positional_encoding(dirs, self.dir_freqs)], -1)))
        return torch.sigmoid(self.rgb2(h))
