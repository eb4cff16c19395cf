"""IPSM's inline-prior masks on real depth: the min-max test (IPSM's code, fewview's default) beside fewview's
relative test, on validation objects whose ground-truth depth says which pixels the source view really sees.

For each object, view ``k`` (source) is warped into view ``k+1`` (about 11 degrees away) through ground-truth
depths, and each mask is scored against true visibility (the target point's depth in the source camera within
1 % of the source's depth there). Writes a picture [source | target | warped | min-max < 0.3 | min-max < 0.1 |
relative] per object and prints precision / recall of each mask.

    python benchmarks/ipsm_masks.py --objects data/fewview-objects-mixed --out docs/images/ipsm_masks.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewview.diffusion.masks import ipsm_warp, reproject
from fewview.evaluation import to_uint8
from fewview.objects.builder import load_object


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", default="data/fewview-objects-mixed")
    ap.add_argument("--n-objects", type=int, default=20, help="validation objects scored")
    ap.add_argument("--shown", type=int, default=4, help="objects in the picture")
    ap.add_argument("--out", default="docs/images/ipsm_masks.png")
    args = ap.parse_args()
    card = json.loads((Path(args.objects) / "card.json").read_text())
    ids = [i for i in card["splits"]["val"] if str(i) not in card.get("household", {}).get("skipped", {})]
    ids = ids[: args.n_objects]
    stats = {name: {"tp": 0, "fp": 0, "fn": 0} for name in ("minmax<0.3", "minmax<0.1", "relative")}
    rows = []
    for n, oi in enumerate(ids):
        scene = load_object(args.objects, oi)
        k, j = 0, 1
        img = scene.composite(1.0)
        c, d = scene.cameras, scene.depths
        args_w = (d[j : j + 1], c.c2w[j : j + 1], c.K[j : j + 1], img[k : k + 1], d[k : k + 1], c.c2w[k : k + 1],
                  c.K[k : k + 1])  # fmt: skip
        warped, _, (m3, m1) = ipsm_warp(*args_w, thresholds=(0.3, 0.1))
        _, _, (rel, _) = ipsm_warp(*args_w, thresholds=(0.3, 0.1), test="relative")
        uv, z, ok = reproject(d[j : j + 1], c.c2w[j : j + 1], c.K[j : j + 1], c.c2w[k : k + 1], c.K[k : k + 1])
        h, w = d.shape[-2:]
        iu, iv = uv[..., 0].floor().long(), uv[..., 1].floor().long()
        inside = ok & (iu >= 0) & (iu < w) & (iv >= 0) & (iv < h)
        ds = d[k, 0].double()[iv.clamp(0, h - 1), iu.clamp(0, w - 1)]
        truth = (inside & (ds > 0) & ((z - ds).abs() < 0.01 * z))[:, None]
        for name, m in (("minmax<0.3", m3), ("minmax<0.1", m1), ("relative", rel)):
            s = stats[name]
            s["tp"] += int((m & truth).sum())
            s["fp"] += int((m & ~truth).sum())
            s["fn"] += int((~m & truth).sum())
        if n < args.shown:
            show = lambda m: m[0].float().expand(3, -1, -1)  # noqa: E731
            rows.append(torch.cat([img[k], img[j], warped[0], show(m3), show(m1), show(rel)], -1))
    for name, s in stats.items():
        p = s["tp"] / max(s["tp"] + s["fp"], 1)
        r = s["tp"] / max(s["tp"] + s["fn"], 1)
        print(f"{name:11s} precision {p:.3f}  recall {r:.3f}  ({len(ids)} val objects)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    big = torch.nn.functional.interpolate(torch.cat(rows, -2)[None], scale_factor=2, mode="nearest")[0]
    Image.fromarray(to_uint8(big)).save(out)
    print(f"wrote {out}; reproduce: python {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
