"""Real3D's curation pool: cluttered images of household objects with ground-truth instance masks and depth, so
the occlusion-based curation (:mod:`fewview.data.curation`) can be scored.

Each image holds 2-4 household objects, each one of its renders (colour, alpha and depth from fewview's
rasterizer) scaled and placed on a larger canvas: they touch and overlap, and some leave the frame. Every
instance is pushed back by its own depth offset and the canvas is z-buffered, so the visible masks and the depth
map are those of the composed scene (a 2.5-D composition of perspective renders: the instances do not
interpenetrate). Ground truth per instance, from its amodal (unoccluded, unclipped) mask:

- ``truncated``: part of the amodal mask lies outside the canvas;
- ``occluded``: more than ``occluded_fraction`` of its in-canvas amodal pixels are hidden by nearer instances;
- ``clean`` otherwise: the instances a curation step should keep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class ClutterConfig:
    images: int = 60
    canvas: int = 128
    min_objects: int = 2
    max_objects: int = 4
    scale: tuple[float, float] = (1.0, 1.8)  # resize of the 64² object render
    depth_spread: float = 1.5  # instances are pushed back by U[0, depth_spread]
    occluded_fraction: float = 0.02
    background: float = 1.0
    seed: int = 0


@dataclass
class ClutterImage:
    rgb: Tensor  # (3, C, C)
    depth: Tensor  # (C, C), 0 on the background
    masks: Tensor  # (N, C, C) bool visible instance masks
    truth: list[str]  # per instance: "clean", "occluded" or "truncated"
    objects: list[int]
    boxes: list[tuple[int, int, int]] = field(default_factory=list)  # per instance: (y, x, side) of its placed render
    sources: list[int] = field(default_factory=list)  # per instance: its object's index in the source


def compose(rgba: list[Tensor], depth: list[Tensor], offsets: list[tuple[int, int]], shifts: list[float],
            canvas: int, background: float, occluded_fraction: float) -> ClutterImage:  # fmt: skip
    """Z-buffer instances (rgba (4, h, w) in [0, 1], depth (h, w) with 0 off the object) placed with their top-left
    corner at ``offsets`` (y, x; may lie outside) and pushed back by ``shifts``."""
    n = len(rgba)
    zbuf = torch.full((n, canvas, canvas), float("inf"))
    cols = torch.zeros(n, 3, canvas, canvas)
    amodal_total = []
    for i, (im, d, (y, x), s) in enumerate(zip(rgba, depth, offsets, shifts, strict=True)):
        h, w = d.shape
        on = (im[3] > 0.5) & (d > 0)
        amodal_total.append(int(on.sum()))
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, canvas), min(x + w, canvas)
        if y1 <= y0 or x1 <= x0:
            continue
        sub = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
        z = torch.where(on[sub], d[sub] + s, torch.full_like(d[sub], float("inf")))
        zbuf[i, y0:y1, x0:x1] = z
        cols[i, :, y0:y1, x0:x1] = im[:3][:, sub[0], sub[1]]
    near, who = zbuf.min(0)
    hit = torch.isfinite(near)
    masks = torch.stack([(who == i) & hit for i in range(n)])
    rgb = torch.full((3, canvas, canvas), background)
    for i in range(n):
        rgb = torch.where(masks[i][None], cols[i], rgb)
    truth = []
    for i in range(n):
        inside = torch.isfinite(zbuf[i])
        if int(inside.sum()) < amodal_total[i]:
            truth.append("truncated")
        elif int(inside.sum()) - int(masks[i].sum()) > occluded_fraction * max(int(inside.sum()), 1):
            truth.append("occluded")
        else:
            truth.append("clean")
    return ClutterImage(rgb, torch.where(hit, near, torch.zeros_like(near)), masks, truth, [])


def build_pool(source, cfg: ClutterConfig | None = None) -> list[ClutterImage]:
    """``cfg.images`` cluttered images from the objects of ``source`` (an ObjectsSource with depth)."""
    cfg = cfg or ClutterConfig()
    rng = np.random.default_rng(cfg.seed)
    pool = []
    for _ in range(cfg.images):
        k = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        objs = rng.choice(len(source), size=k, replace=False).tolist()
        rgba, depth, shifts, boxes = [], [], [], []
        for s in objs:
            v = int(rng.integers(source.num_views(s)))
            img, msk, _ = source.views(s, [v])
            d = source.depths(s, [v])[0, 0].float()
            a = torch.cat([img[0], msk[0]], 0)
            f = float(rng.uniform(*cfg.scale))
            size = max(int(round(a.shape[-1] * f)), 4)
            a = F.interpolate(a[None], size=(size, size), mode="bilinear", align_corners=False)[0]
            d = F.interpolate(d[None, None], size=(size, size), mode="nearest")[0, 0]
            rgba.append(a)
            depth.append(d)
            # centres spread over the canvas, up to a third of the object outside it
            c = rng.uniform(-size / 3, cfg.canvas - 2 * size / 3, size=2)
            boxes.append((int(c[0]), int(c[1]), size))
            shifts.append(float(rng.uniform(0, cfg.depth_spread)))
        offs = [(y, x) for y, x, _ in boxes]
        im = compose(rgba, depth, offs, shifts, cfg.canvas, cfg.background, cfg.occluded_fraction)
        im.objects, im.boxes, im.sources = [int(source.ids[s]) for s in objs], boxes, objs
        pool.append(im)
    return pool


def pool_disparity(im: ClutterImage, net=None) -> Tensor:
    """(C, C) disparity of a pool image: the monocular depth network's (``net``) or, without one, the renderer's."""
    if net is None:
        return torch.where(im.depth > 0, 1 / im.depth.clamp_min(1e-6), torch.zeros_like(im.depth))
    with torch.no_grad():
        return net.predict(im.rgb[None])[0, 0]


def instance_view(im: ClutterImage, i: int, res: int, background: float = 1.0) -> tuple[Tensor, Tensor]:
    """Instance ``i`` cut out of a pool image as a single view: its render's window (in the render's own framing,
    so its camera is the render's), resized to ``res``, everything outside its visible mask on ``background``
    (occluders and the frame cut it as they would a segmented photo). Returns rgb (3, res, res), mask (1, res, res)."""
    y, x, side = im.boxes[i]
    c = im.rgb.shape[-1]
    rgb = torch.full((3, side, side), background)
    mask = torch.zeros(1, side, side)
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + side, c), min(x + side, c)
    if y1 > y0 and x1 > x0:
        m = im.masks[i, y0:y1, x0:x1].float()
        rgb[:, y0 - y : y1 - y, x0 - x : x1 - x] = im.rgb[:, y0:y1, x0:x1] * m + background * (1 - m)
        mask[:, y0 - y : y1 - y, x0 - x : x1 - x] = m
    if side != res:
        rgb = F.interpolate(rgb[None], size=(res, res), mode="area")[0]
        mask = F.interpolate(mask[None], size=(res, res), mode="area")[0]
    return rgb, mask


def score_curation(pool: list[ClutterImage], verdicts: list[list]) -> dict:
    """Precision and recall of the kept instances against the clean ones, and the verdicts by ground truth."""
    kept_clean = kept = clean = 0
    table: dict[str, dict[str, int]] = {}
    for im, vs in zip(pool, verdicts, strict=True):
        for t, v in zip(im.truth, vs, strict=True):
            kept += v.keep
            clean += t == "clean"
            kept_clean += v.keep and t == "clean"
            table.setdefault(t, {}).setdefault(v.reason, 0)
            table[t][v.reason] += 1
    n = sum(len(im.truth) for im in pool)
    return {"precision": kept_clean / kept if kept else float("nan"),
            "recall": kept_clean / clean if clean else float("nan"),
            "kept": kept, "clean": clean, "instances": n, "by_truth": table}  # fmt: skip
