"""The scene structure every reader returns, and the data error type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..cameras import CameraError, Cameras


class DataError(ValueError):
    """Bad input data. The message is one line naming the file and the field."""

    def __init__(self, path: str | Path, field: str, problem: str):
        self.path, self.field, self.problem = str(path), field, problem
        super().__init__(f"{path}: {field}: {problem}" if field else f"{path}: {problem}")


# How a scene's pixels outside the object should be treated.
#   "alpha":  images are RGB with a separate alpha in ``masks``; composite onto a chosen background.
#   "black"/"white": the object was already composited onto that colour.
#   "photo":  a real photograph background (masks, if any, mark the object).
BACKGROUNDS = ("alpha", "black", "white", "photo")


@dataclass
class Scene:
    """N posed views of one scene.

    Attributes:
        images: (N, 3, H, W) float32 RGB in [0, 1] (straight, not premultiplied, when background="alpha").
        cameras: N cameras in fewview's convention (see :mod:`fewview.cameras`).
        masks: optional (N, 1, H, W) float32 in [0, 1] (alpha or object mask).
        depths: optional (N, 1, H, W) float32 z-depth in world units, 0 where unknown.
        near_far: optional (N, 2) per-view depth bounds in world units.
        bounds: optional (2, 3) axis-aligned box (min, max) containing the scene.
        valid: optional (N, 1, H, W) float32, 1 where pixels come from the photo (0 in padding).
        background: one of ``BACKGROUNDS``.
        frames: for each view, the file it came from (and optional extra info after a '#').
        name: a short scene name.
        meta: format-specific extras (plain JSON-able values).
    """

    images: Tensor
    cameras: Cameras
    masks: Tensor | None = None
    depths: Tensor | None = None
    near_far: Tensor | None = None
    bounds: Tensor | None = None
    valid: Tensor | None = None
    background: str = "photo"
    frames: list[str] = field(default_factory=list)
    name: str = "scene"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background: expected one of {BACKGROUNDS}, got {self.background!r}")
        if len(self.cameras) != n:
            raise ValueError(f"cameras: {len(self.cameras)} cameras for {n} images")
        for name in ("masks", "depths", "valid", "near_far"):
            t = getattr(self, name)
            if t is not None and t.shape[0] != n:
                raise ValueError(f"{name}: {t.shape[0]} {name} for {n} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[-2]

    @property
    def width(self) -> int:
        return self.images.shape[-1]

    def select(self, idx) -> Scene:
        """A scene with only the views ``idx`` (a list/tensor of indices)."""
        idx = torch.as_tensor(idx, dtype=torch.long)

        def pick(t):
            return None if t is None else t[idx]

        return Scene(
            images=self.images[idx],
            cameras=Cameras(self.cameras.c2w[idx], self.cameras.K[idx], self.cameras.size[idx]),
            masks=pick(self.masks),
            depths=pick(self.depths),
            near_far=pick(self.near_far),
            bounds=self.bounds,
            valid=pick(self.valid),
            background=self.background,
            frames=[self.frames[i] for i in idx.tolist()] if self.frames else [],
            name=self.name,
            meta=dict(self.meta),
        )

    def composite(self, background: tuple[float, float, float] | float = 1.0) -> Tensor:
        """(N, 3, H, W) images composited onto a constant colour using ``masks``.

        For background="alpha" this is the usual over-compositing; for a masked real scene it
        replaces everything outside the mask. Without masks the images are returned unchanged.
        """
        if self.masks is None:
            return self.images
        bg = torch.as_tensor(background, dtype=self.images.dtype).reshape(-1, 1, 1)
        return self.images * self.masks + bg * (1 - self.masks)

    def summary(self) -> str:
        c = self.cameras.centers
        lines = [
            f"scene {self.name}: {len(self)} views, {self.width}x{self.height}, background={self.background}",
            f"  masks: {'no' if self.masks is None else 'yes'}, depths: {'no' if self.depths is None else 'yes'}",
            f"  focal (px): {float(self.cameras.fx.mean()):.2f}, camera distance from origin: "
            f"{float(c.norm(dim=-1).min()):.3f}-{float(c.norm(dim=-1).max()):.3f}",
        ]
        if self.near_far is not None:
            lines.append(f"  near/far: {float(self.near_far[:, 0].min()):.3f} / {float(self.near_far[:, 1].max()):.3f}")
        if self.bounds is not None:
            lines.append(f"  bounds: {self.bounds[0].tolist()} .. {self.bounds[1].tolist()}")
        return "\n".join(lines)


def validate_cameras(cams: Cameras, path: str | Path, field: str) -> None:
    """Turn camera validation failures into a :class:`DataError` naming ``path`` and ``field``."""
    try:
        cams.validate(where=field)
    except CameraError as e:
        msg = str(e)
        fld, _, problem = msg.partition(": ")
        raise DataError(path, fld, problem) from None
