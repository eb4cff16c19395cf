"""View-selection protocols: named, seeded functions returning input and evaluation view indices.

Evaluation views never include input views. Protocol names used by benchmarks are listed in
``PROTOCOLS`` (see ``docs/benchmarks.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .scene import DataError

# Views DietNeRF/RegNeRF/FreeNeRF use for 8-view NeRF-synthetic (the 3-view set is the first three).
BLENDER_SPARSE_IDS = (26, 86, 2, 55, 75, 93, 16, 73)
DTU_TRAIN_IDS = (25, 22, 28, 40, 44, 48, 0, 8, 13)
DTU_EXCLUDED_IDS = (3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39)


@dataclass(frozen=True)
class ViewSplit:
    """Indices into a scene's views: the inputs a method sees and the views it is evaluated on."""

    protocol: str
    inputs: tuple[int, ...]
    evaluation: tuple[int, ...]
    input_split: str | None = None  # for formats with split files (Blender): where each set comes from
    eval_split: str | None = None

    def __post_init__(self) -> None:
        overlap = set(self.inputs) & set(self.evaluation) if self.input_split == self.eval_split else set()
        if overlap:
            raise ValueError(f"{self.protocol}: evaluation views overlap the inputs: {sorted(overlap)}")


def _need(protocol: str, n: int, needed: int, what: str = "views") -> None:
    if n < needed:
        raise DataError(f"protocol {protocol}", "views", f"needs at least {needed} {what}, the scene has {n}")


def sparsefusion_co3d(n_frames: int, k: int = 2, seed: int = 0, n_eval_frames: int = 32) -> tuple[list[int], ViewSplit]:
    """SparseFusion's CO3D protocol.

    Of a sequence's ``n_frames`` (sorted by timestamp) 32 are taken by ``linspace``; ``k`` of those are
    inputs by ``torch.randperm(32)`` seeded with ``seed`` (the scene index); the other 32 - k are evaluated.

    Returns:
        (frame indices of the 32 into the sequence, split whose indices point into those 32).
    """
    _need("sparsefusion-co3d", n_frames, n_eval_frames, "frames")
    _need("sparsefusion-co3d", n_eval_frames, k + 1)
    frames = np.linspace(0, n_frames - 1, n_eval_frames).round().astype(int).tolist()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_eval_frames, generator=g).tolist()
    inputs = tuple(perm[:k])
    evaluation = tuple(i for i in range(n_eval_frames) if i not in inputs)
    return frames, ViewSplit("sparsefusion-co3d", inputs, evaluation)


def ipsm_llff(n_images: int, k: int = 3) -> ViewSplit:
    """IPSM / RegNeRF LLFF: every 8th image (index % 8 == 0) is a test view; ``k`` inputs are taken by
    ``linspace`` over the remaining images (sorted by name), rounded."""
    test = [i for i in range(n_images) if i % 8 == 0]
    rest = [i for i in range(n_images) if i % 8 != 0]
    _need("llff", len(rest), k, "non-test images")
    if k < 1:
        raise ValueError("k must be at least 1")
    picks = [round(x) for x in np.linspace(0, len(rest) - 1, k)]
    return ViewSplit(f"llff-{k}view", tuple(rest[i] for i in picks), tuple(test))


def ipsm_dtu(n_images: int = 49, k: int = 3) -> ViewSplit:
    """IPSM / RegNeRF DTU: fixed training ids (first ``k`` of 25, 22, 28, 40, 44, 48, 0, 8, 13);
    test views are all others except the excluded ids."""
    if not 1 <= k <= len(DTU_TRAIN_IDS):
        raise ValueError(f"k must be in 1..{len(DTU_TRAIN_IDS)}")
    _need(f"dtu-{k}view", n_images, 49, "images")
    train = DTU_TRAIN_IDS[:k]
    test = tuple(i for i in range(n_images) if i not in DTU_TRAIN_IDS and i not in DTU_EXCLUDED_IDS)
    return ViewSplit(f"dtu-{k}view", train, test)


def blender_views(n_train: int, k: int, n_test: int = 25, seed: int | None = None) -> ViewSplit:
    """``k`` views of a Blender scene's train split; evaluation is test views 0..n_test-1.

    ``evaluation`` indexes the *test* split file (``eval_split="test"``).
    With ``seed=None`` the standard DietNeRF/RegNeRF ids are used (k <= 8); otherwise a seeded permutation.
    """
    if seed is None:
        if k > len(BLENDER_SPARSE_IDS):
            raise ValueError(f"without a seed k must be <= {len(BLENDER_SPARSE_IDS)}")
        _need(f"blender-{k}view", n_train, max(BLENDER_SPARSE_IDS[:k]) + 1, "train views")
        inputs = BLENDER_SPARSE_IDS[:k]
    else:
        _need(f"blender-{k}view", n_train, k, "train views")
        inputs = tuple(torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))[:k].tolist())
    return ViewSplit(f"blender-{k}view", tuple(inputs), tuple(range(n_test)), "train", "test")


def objects_views(object_index: int, k: int, n_views: int = 32) -> ViewSplit:
    """fewview-objects protocol: ``k`` inputs by a permutation seeded with the object's index, the rest evaluated."""
    _need(f"objects-{k}view", n_views, k + 1)
    perm = torch.randperm(n_views, generator=torch.Generator().manual_seed(object_index)).tolist()
    inputs = tuple(perm[:k])
    return ViewSplit(f"objects-{k}view", inputs, tuple(i for i in range(n_views) if i not in inputs))


def blender_split(n_train: int, n_test: int) -> ViewSplit:
    """Every view of a Blender scene's train file is an input, every view of its test file is evaluated."""
    return ViewSplit("blender-split", tuple(range(n_train)), tuple(range(n_test)), "train", "test")


def blender_first(n_train: int, n_test: int, k: int) -> ViewSplit:
    """The first ``k`` views of a Blender scene's train file are the inputs; every test view is evaluated."""
    _need(f"blender-split-{k}view", n_train, k)
    return ViewSplit(f"blender-split-{k}view", tuple(range(k)), tuple(range(n_test)), "train", "test")


# Named protocols of docs/benchmarks.md (scene-specific ones take the scene's view count).
PROTOCOLS = {
    "blender-split": blender_split,
    "blender-split-2view": lambda n_train, n_test: blender_first(n_train, n_test, 2),
    "lego-dense": lambda n_train=100: ViewSplit("lego-dense", tuple(range(n_train)), tuple(range(25)), "train", "test"),
    "lego-3view": lambda n_train=100: replace(blender_views(n_train, 3), protocol="lego-3view"),
    # lego-3view's inputs evaluated on val views 0-24: the views presets and hyperparameters are chosen on
    "lego-3view-val": lambda n_train=100: replace(
        blender_views(n_train, 3), protocol="lego-3view-val", eval_split="val"
    ),
    "lego-8view": lambda n_train=100: replace(blender_views(n_train, 8), protocol="lego-8view"),
    "llff-3view": lambda n_images: ipsm_llff(n_images, 3),
    "dtu-3view": lambda n_images=49: ipsm_dtu(n_images, 3),
    "objects-1view": lambda object_index, n_views=32: objects_views(object_index, 1, n_views),
    "objects-2view": lambda object_index, n_views=32: objects_views(object_index, 2, n_views),
    "objects-3view": lambda object_index, n_views=32: objects_views(object_index, 3, n_views),
}


def get_protocol(name: str):
    """The protocol function registered under ``name``."""
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]
