"""Benchmark `semantic_encoders`: how view-invariant is each candidate f of Real3D's semantic loss?

Candidates: the frozen ImageNet AlexNet trunk (pooled conv5, LPIPS's trunk) and view encoders trained here on set A
(`fewview train viewenc`). On held-out objects (test split; parametric = set A's kind, household = set B's, never
seen by either encoder), each object gives ``--views`` evenly spaced views; queries are composited on grey (as
Real3D's input), the gallery on white (as its renders). Figures per candidate and group:

- top-1: the share of queries whose most similar gallery view (its own view excluded) shows the same object;
- same / other: mean cosine of a query with the other views of its object, and with views of other objects;
- gap: same − other (how much more a view resembles its own object than another one).

    python benchmarks/semantic_encoders.py --objects data/fewview-objects-mixed --encoders runs/viewenc/pretrained
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from fewview.models.lrm import LRM, LRMConfig
from fewview.pretrained import from_pretrained, resolve_model_dir
from fewview.train.data import ObjectsSource


@torch.no_grad()
def measure(feat, queries: torch.Tensor, gallery: torch.Tensor, obj: torch.Tensor) -> dict:
    fq = torch.cat([feat(q) for q in queries.split(64)])
    fg = torch.cat([feat(g) for g in gallery.split(64)])
    sim = fq @ fg.T
    same = obj[:, None] == obj[None]
    eye = torch.eye(len(obj), dtype=torch.bool)
    top = sim.masked_fill(eye, float("-inf")).argmax(1)
    return {"top1": float((obj[top] == obj).float().mean()), "same": float(sim[same & ~eye].mean()),
            "other": float(sim[~same].mean()), "gap": float(sim[same & ~eye].mean() - sim[~same].mean())}  # fmt: skip


def views_of(root: str, group: str, n_objects: int, n_views: int):
    src = ObjectsSource(root, "test", n_objects, group=group)
    q, g, obj = [], [], []
    for s in range(len(src)):
        v = src.num_views(s)
        idx = [round(i * v / n_views) % v for i in range(n_views)]
        img, msk, _ = src.views(s, idx)
        q.append(img * msk + 0.5 * (1 - msk))
        g.append(img * msk + (1 - msk))
        obj += [s] * n_views
    return torch.cat(q), torch.cat(g), torch.tensor(obj)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", default="data/fewview-objects-mixed")
    ap.add_argument("--encoders", nargs="*", default=[], help="viewenc folders or shipped names")
    ap.add_argument("--n-objects", type=int, default=40, help="per group")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--out", default="bench-out/semantic_encoders")
    args = ap.parse_args()
    torch.manual_seed(0)
    cands = {"alexnet (ImageNet, frozen)": LRM(LRMConfig(semantic_encoder="alexnet")).semantic_features}
    for e in args.encoders:
        enc = from_pretrained(resolve_model_dir(e)).eval()
        cands[f"viewenc {e}"] = enc.features
    res = {}
    for group in ("parametric", "household"):
        q, g, obj = views_of(args.objects, group, args.n_objects, args.views)
        for name, f in cands.items():
            r = measure(lambda x, f=f: f(F.interpolate(x, size=(64, 64), mode="area")), q, g, obj)
            res.setdefault(name, {})[group] = r
            print(f"{name:32s} {group:10s} top-1 {r['top1']:.3f}  same {r['same']:.3f}  other {r['other']:.3f}  "
                  f"gap {r['gap']:.3f}", flush=True)  # fmt: skip
    cmd = "python benchmarks/semantic_encoders.py " + " ".join(sys.argv[1:])
    print(f"reproduce: {cmd}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"command": cmd, "results": res}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
