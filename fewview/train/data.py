"""Multi-view training data: context/query sampling over fewview-objects shards or CO3D sequences.

Sampling is a pure function of (seed, step, position in the global batch): any number of processes
sees exactly the items a single process would, so DDP runs match single-process runs, and a resumed
run draws what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..cameras import Cameras
from ..data import DataError


def item_generator(seed: int, step: int, item: int) -> torch.Generator:
    """Generator for item ``item`` (>= -1; -1 is the step itself) of training step ``step``."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, item + 1]).generate_state(1)[0]))


class ObjectsSource:
    """All views of the objects in one split of a fewview-objects dataset, held in memory as uint8."""

    def __init__(self, root: str | Path, split: str = "train", limit: int | None = None, depth: bool = False,
                 group: str = "all"):  # fmt: skip
        """``group``: ``all``, ``household`` (the household models) or ``parametric`` (every other object)."""
        root = Path(root)
        card_path = root / "card.json"
        if not card_path.is_file():
            raise DataError(card_path, "", "not a fewview-objects dataset (build one with `fewview data objects`)")
        card = json.loads(card_path.read_text())
        if split not in card.get("splits", {}):
            raise DataError(card_path, "splits", f"no split {split!r}")
        if group not in ("all", "household", "parametric"):
            raise ValueError(f"group {group!r}: choose all, household or parametric")
        want = card["splits"][split]
        if group != "all":
            household = set(card.get("household", {}).get("models", {}))
            want = [o for o in want if (str(o) in household) == (group == "household")]
        want = want[:limit] if limit else want
        if not want:
            raise DataError(card_path, "splits", f"split {split!r} has no {group} objects")
        pos = {o: k for k, o in enumerate(want)}
        rgba, c2w, dep, K = [None] * len(want), [None] * len(want), [None] * len(want), None
        for sh in card["shards"]:
            lo, hi = sh["objects"]
            if not any(lo <= o <= hi for o in want):
                continue
            with np.load(root / sh["file"]) as z:
                K, idx = z["K"], z["index"].tolist()
                sel = [j for j, o in enumerate(idx) if o in pos]
                if not sel:
                    continue
                all_rgba, all_c2w = z["rgba"], z["c2w"]  # each z[...] access decompresses the whole array
                all_dep = z["depth"] if depth else None
                for j in sel:
                    rgba[pos[idx[j]]], c2w[pos[idx[j]]] = all_rgba[j], all_c2w[j]
                    if depth:
                        dep[pos[idx[j]]] = all_dep[j].astype(np.float16)
        missing = [o for o, r in zip(want, rgba, strict=True) if r is None]
        if missing:
            raise DataError(card_path, "shards", f"objects {missing[:5]} of split {split} are missing")
        self.ids = list(want)
        self.rgba = np.stack(rgba)  # (S, V, H, W, 4) uint8
        self.c2w = torch.from_numpy(np.stack(c2w)).double()  # (S, V, 4, 4)
        self.K = torch.from_numpy(np.asarray(K)).double()
        self.res = self.rgba.shape[2]
        self.depth = np.stack(dep) if depth else None  # (S, V, H, W) float16, 0 on background

    def __len__(self) -> int:
        return len(self.ids)

    def num_views(self, s: int) -> int:
        return self.rgba.shape[1]

    def views(self, s: int, idx: list[int]) -> tuple[Tensor, Tensor, Cameras]:
        """(images (n,3,H,W), masks (n,1,H,W), cameras) of scene ``s``."""
        x = torch.from_numpy(self.rgba[s, idx]).float().div_(255).permute(0, 3, 1, 2)
        n = len(idx)
        cams = Cameras(self.c2w[s, idx], self.K.expand(n, 3, 3).clone(), torch.tensor([self.res, self.res]))
        return x[:, :3], x[:, 3:], cams

    def depths(self, s: int, idx: list[int]) -> Tensor:
        """Depth maps (n,1,H,W) of scene ``s`` (0 on background); needs ``depth=True``."""
        if self.depth is None:
            raise ValueError("this ObjectsSource was opened without depth=True")
        return torch.from_numpy(self.depth[s, idx].astype(np.float32)).unsqueeze(1)


class SingleViewSource:
    """Real3D's set B: objects of which training may read exactly one view. The view of each object is fixed by
    ``(seed, object)``; the other views are dropped when the data is loaded, so nothing can read them."""

    def __init__(self, root: str | Path, split: str = "train", group: str = "household", seed: int = 0,
                 limit: int | None = None, depth: bool = False):  # fmt: skip
        full = ObjectsSource(root, split, limit, depth, group)
        v = full.rgba.shape[1]
        self.ids = list(full.ids)
        self.view = [int(np.random.default_rng([seed, o]).integers(v)) for o in self.ids]
        pick = np.arange(len(self.ids))
        self.rgba = np.ascontiguousarray(full.rgba[pick, self.view][:, None])  # (S, 1, H, W, 4)
        self.c2w = full.c2w[pick, self.view][:, None].clone()
        self.K, self.res = full.K, full.res
        self.depth = None if full.depth is None else np.ascontiguousarray(full.depth[pick, self.view][:, None])
        del full

    def __len__(self) -> int:
        return len(self.ids)

    def num_views(self, s: int) -> int:
        return 1

    def views(self, s: int, idx: list[int]) -> tuple[Tensor, Tensor, Cameras]:
        """The object's one view: ``idx`` must be [0]."""
        if list(idx) != [0]:
            raise IndexError(f"object {self.ids[s]} has one training view (single-view set); asked for {idx}")
        return ObjectsSource.views(self, s, [0])  # type: ignore[arg-type]

    def depths(self, s: int, idx: list[int]) -> Tensor:
        if list(idx) != [0]:
            raise IndexError(f"object {self.ids[s]} has one training view (single-view set); asked for {idx}")
        return ObjectsSource.depths(self, s, [0])  # type: ignore[arg-type]


class PoolSingleViewSource(SingleViewSource):
    """Set B as Real3D meets it in the wild: instances cut out of cluttered images (the curation pool of
    :mod:`fewview.objects.clutter`, composed from each object's one allowed view), occluders and the frame
    included; ``curated`` keeps only the instances that Real3D's occlusion-based curation keeps (on the disparity of
    ``depth``: a monocular depth network's folder or shipped name, or ``"renderer"``). Each instance keeps its
    object's camera (the cut-out is in the render's own framing)."""

    def __init__(self, root: str | Path, split: str = "train", group: str = "household", seed: int = 0,
                 limit: int | None = None, images: int = 400, curated: bool = True,
                 depth: str = "depth64"):  # fmt: skip
        from ..data.curation import CurationConfig, curate
        from ..objects.clutter import ClutterConfig, build_pool, instance_view, pool_disparity

        single = SingleViewSource(root, split, group, seed, limit, depth=True)
        pool = build_pool(single, ClutterConfig(images=images, seed=seed))
        net = None
        if curated and depth != "renderer":
            from ..pretrained import from_pretrained, resolve_model_dir

            net = from_pretrained(resolve_model_dir(depth)).eval()
        cc = CurationConfig(min_scale=20.0, border=2, seed=seed)  # `fewview data curate`'s at the 128² canvas
        rgba, c2w, ids, self.view, self.truth = [], [], [], [], []
        for im in pool:
            if curated:
                keep = [v.keep for v in curate(im.masks, pool_disparity(im, net), cc)]
            else:
                keep = [bool(m.any()) for m in im.masks]
            for i, k in enumerate(keep):
                if not k:
                    continue
                rgb, mask = instance_view(im, i, single.res)
                rgba.append((torch.cat([rgb, mask]).permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8))
                c2w.append(single.c2w[im.sources[i], 0])
                ids.append(im.objects[i])
                self.view.append(single.view[im.sources[i]])
                self.truth.append(im.truth[i])
        if not rgba:
            raise DataError(Path(root), "household", "the curation pool kept no instance")
        self.ids = ids
        self.rgba = torch.stack(rgba)[:, None].numpy()  # (S, 1, H, W, 4)
        self.c2w = torch.stack(c2w)[:, None].clone()
        self.K, self.res, self.depth = single.K, single.res, None


class SelfTrainingSource(ObjectsSource):
    """Real3D's data: set A (multi-view objects of ``multi_view`` group, all views) plus ``single_view``, set B (a
    :class:`SingleViewSource`: one view per object), from one fewview-objects folder. Batches come from A; the
    trainer draws a second batch from B (``Batch.single``) every step. ``pool`` ("pool" or "pool-curated") takes
    set B's views from the cluttered curation pool instead (:class:`PoolSingleViewSource`), uncurated or curated."""

    def __init__(self, root: str | Path, split: str = "train", multi_view: str = "parametric",
                 single_view: str = "household", seed: int = 0, limit: int | None = None, pool: str = "objects",
                 pool_images: int = 400, pool_depth: str = "depth64"):  # fmt: skip
        super().__init__(root, split, limit, False, multi_view)
        if pool == "objects":
            self.single_view = SingleViewSource(root, split, single_view, seed, limit)
        elif pool in ("pool", "pool-curated"):
            self.single_view = PoolSingleViewSource(root, split, single_view, seed, limit, pool_images,
                                                    pool == "pool-curated", pool_depth)  # fmt: skip
        else:
            raise ValueError(f"single-view source {pool!r}: choose objects, pool or pool-curated")


class CO3DSource:
    """CO3Dv2 sequences (SparseFusion's box crop to ``res``), loaded on demand with a small cache."""

    def __init__(self, root: str | Path, categories: list[str], subset: str = "fewview_train", split: str = "train",
                 res: int = 64, cache: int = 64):  # fmt: skip
        from ..data.co3d import list_sequences

        self.root, self.res = Path(root), res
        self.items = [(c, s) for c in categories for s in list_sequences(root, c, subset, split)]
        if not self.items:
            raise DataError(self.root, "set_lists", f"no sequences in {categories} {subset}/{split}")
        self._cache: OrderedDict = OrderedDict()
        self._size = cache

    def __len__(self) -> int:
        return len(self.items)

    def _scene(self, s: int):
        from ..data.co3d import BoxCrop, load_co3d_sequence

        if s not in self._cache:
            cat, seq = self.items[s]
            self._cache[s] = load_co3d_sequence(self.root, cat, seq, box_crop=BoxCrop(image_size=self.res))
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(s)
        return self._cache[s]

    def num_views(self, s: int) -> int:
        return len(self._scene(s))

    def views(self, s: int, idx: list[int]) -> tuple[Tensor, Tensor, Cameras]:
        sc = self._scene(s).select(idx)
        return sc.images, sc.masks, sc.cameras

    def valid(self, s: int, idx: list[int]) -> Tensor:
        """(n, 1, H, W): 1 where the pixel comes from the photo, 0 in the box crop's padding."""
        sc = self._scene(s).select(idx)
        return sc.valid if sc.valid is not None else torch.ones_like(sc.masks)


@dataclass
class Batch:
    """A batch of scenes, each with ``n`` context views and one query view (images on ``background``)."""

    context: Tensor  # (B, n, 3, H, W)
    context_c2w: Tensor  # (B, n, 4, 4)
    context_K: Tensor  # (B, n, 3, 3)
    query: Tensor  # (B, 3, H, W)
    query_mask: Tensor  # (B, 1, H, W)
    query_c2w: Tensor  # (B, 4, 4)
    query_K: Tensor  # (B, 3, 3)
    rays: Tensor | None  # (B, R) pixel indices of the query rays to supervise (None: every pixel)
    noise: Tensor | None  # (B, R, S) uniform jitter for stratified samples, drawn with the item's generator
    scene: list[int]
    context_depth: Tensor | None = None  # (B, n, 1, H, W) when the source has depth (0 on background)
    query_depth: Tensor | None = None  # (B, 1, H, W)
    item_seeds: Tensor | None = None  # (B,) int64 seeds for per-item randomness inside the model (noise, masks)
    context_mask: Tensor | None = None  # (B, n, 1, H, W) the context views' masks
    single: Batch | None = None  # single-view objects (query only) for self-training, when the source has them
    progress: float = 0.0  # the step's fraction of the training run (curricula)
    query_valid: Tensor | None = None  # (B, 1, H, W) 1 on the photo's pixels, 0 in padding (sources that pad)

    def item_generators(self) -> list[torch.Generator]:
        """One generator per item, a function of (seed, step, global item): models that draw noise with these
        train identically under any number of processes, and resume exactly."""
        if self.item_seeds is None:
            raise ValueError("this batch carries no item seeds")
        return [torch.Generator().manual_seed(int(s)) for s in self.item_seeds]

    def to(self, device) -> Batch:
        t = lambda x: None if x is None else x.to(device)  # noqa: E731
        return Batch(t(self.context), t(self.context_c2w), t(self.context_K), t(self.query), t(self.query_mask),
                     t(self.query_c2w), t(self.query_K), t(self.rays), t(self.noise), self.scene,
                     t(self.context_depth), t(self.query_depth), self.item_seeds, t(self.context_mask),
                     None if self.single is None else self.single.to(device), self.progress,
                     t(self.query_valid))  # fmt: skip

    def context_cameras(self, b: int) -> Cameras:
        h, w = self.context.shape[-2:]
        return Cameras(self.context_c2w[b], self.context_K[b], torch.tensor([h, w]))

    def query_camera(self, b: int) -> Cameras:
        h, w = self.query.shape[-2:]
        return Cameras(self.query_c2w[b : b + 1], self.query_K[b : b + 1], torch.tensor([h, w]))


def ray_pixels(hw: int, rays: int | None, generator: torch.Generator, valid: Tensor | None = None) -> Tensor:
    """``rays`` distinct random pixel indices of an image of ``hw`` pixels (every pixel when None). With a
    ``valid`` map (1, H, W) they are drawn among the photo's pixels only, with repeats when it has fewer."""
    if rays is None:
        return torch.arange(hw)
    if valid is None or bool((valid > 0.5).all()):
        return torch.randperm(hw, generator=generator)[:rays]
    ok = torch.nonzero(valid.flatten() > 0.5).flatten()
    if len(ok) == 0:
        raise ValueError("the query view has no valid pixel to supervise")
    if len(ok) >= rays:
        return ok[torch.randperm(len(ok), generator=generator)[:rays]]
    return ok[torch.randint(0, len(ok), (rays,), generator=generator)]


def sample_batch(
    source, seed: int, step: int, batch_size: int, context_range: tuple[int, int], rays: int | None,
    samples: int, background: float = 1.0, rank: int = 0, world: int = 1,
) -> Batch:  # fmt: skip
    """This rank's share of the global batch of ``step``: items ``rank * B/world ...``. The number of context
    views is drawn per step in ``[context_range[0], context_range[1]]``."""
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} is not divisible by {world} processes")
    g = item_generator(seed, step, -1)
    lo, hi = context_range
    n = int(torch.randint(lo, hi + 1, (1,), generator=g))
    scenes = torch.randint(0, len(source), (batch_size,), generator=g).tolist()
    per = batch_size // world
    with_depth = getattr(source, "depth", None) is not None
    with_valid = hasattr(source, "valid")
    out = {k: [] for k in ("ctx", "cm", "cc2w", "cK", "q", "qm", "qc2w", "qK", "rays", "noise", "seed")}
    out.update({"cd": [], "qd": []} if with_depth else {})
    out.update({"qv": []} if with_valid else {})
    for j in range(rank * per, (rank + 1) * per):
        gi = item_generator(seed, step, j)
        s = scenes[j]
        v = source.num_views(s)
        if v < n + 1:
            raise DataError(Path(str(s)), "views", f"scene has {v} views; {n} context + 1 query needed")
        pick = torch.randperm(v, generator=gi)[: n + 1].tolist()
        img, msk, cams = source.views(s, pick)
        img = img * msk + background * (1 - msk)
        out["ctx"].append(img[:n])
        out["cm"].append(msk[:n])
        out["cc2w"].append(cams.c2w[:n].float())
        out["cK"].append(cams.K[:n].float())
        out["q"].append(img[n])
        out["qm"].append(msk[n])
        out["qc2w"].append(cams.c2w[n].float())
        out["qK"].append(cams.K[n].float())
        hw = img.shape[-2] * img.shape[-1]
        r = rays if rays is not None else hw
        qv = source.valid(s, pick[n:])[0] if with_valid else None
        out["rays"].append(ray_pixels(hw, rays, gi, qv))
        out["noise"].append(torch.rand(r, samples, generator=gi))
        out["seed"].append(torch.randint(0, 2**62, (), generator=gi))
        if with_depth:
            d = source.depths(s, pick)
            out["cd"].append(d[:n])
            out["qd"].append(d[n])
        if with_valid:
            out["qv"].append(qv)
    st = {k: torch.stack(v) for k, v in out.items()}
    mine = scenes[rank * per : (rank + 1) * per]
    ray_idx = st["rays"] if rays is not None else None
    return Batch(st["ctx"], st["cc2w"], st["cK"], st["q"], st["qm"], st["qc2w"], st["qK"], ray_idx, st["noise"], mine,
                 st.get("cd"), st.get("qd"), st["seed"], st["cm"], query_valid=st.get("qv"))  # fmt: skip
