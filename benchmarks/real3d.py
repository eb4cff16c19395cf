"""Benchmark `real3d`: the paper's Table 5 analog. Each row is a trained LRM folder (the A-only LRM and the
self-training variants); every row reconstructs from one input view.

Protocols: held-out household objects of the mixed fewview-objects set (set B's test split: the input view by the
objects-1view rule, evaluated on the other 31 views) and, from one view, lego-3view's and llff-3view's first input.
Figures: PSNR / SSIM / LPIPS-alex; the paper's self-consistency (render a novel view 90° around, re-encode it,
render the input camera from it, PSNR against the input view); single-image inference time.

    python benchmarks/real3d.py --rows lrm-a=runs/real3d/lrm-a/pretrained curriculum=runs/real3d/curriculum/pretrained

Rows scored by an earlier run into the same ``--out`` stay in its result file (a row scored again is replaced), so
rows can be added as they finish training. Household rows keep per-object figures; ``--paired REF`` prints every
row's difference to row REF on the same objects with its standard error:

    python benchmarks/real3d.py --protocols household-1view --paired lrm-a
    python benchmarks/real3d.py --pool-stats   # what the two pool rows train on
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fewview.data import get_protocol
from fewview.evaluation import evaluate_views, mean_metrics
from fewview.methods.protocol_run import evaluation_targets, protocol_scenes
from fewview.methods.recon import ModelRenderer, input_images, model_image_size
from fewview.metrics import psnr
from fewview.objects.builder import load_object
from fewview.pretrained import from_pretrained


@torch.no_grad()
def self_consistency(model, image: torch.Tensor, cam) -> float:
    """PSNR of the input view re-rendered from a reconstruction of the view 90° around (the paper's metric)."""
    from fewview.cameras import cycle_pose

    c = model.config
    hw = tuple(image.shape[-2:])
    K = cam.K[:1].float()
    canon = model.novel_cameras(K, torch.zeros(1), torch.zeros(1), hw)
    novel = model.novel_cameras(K, torch.tensor([math.pi / 2]), torch.zeros(1), hw)
    planes = model.triplane(image[None])
    rend = model.render_image(planes, novel, K, hw)
    keep = (rend["opacity"] > c.cycle_threshold).float()
    again = model.triplane(rend["rgb"] * keep + c.input_background * (1 - keep))
    back = model.render_image(again, cycle_pose(canon.double(), novel.double()).float(), K, hw)
    mask = (image - c.input_background).abs().sum(0, keepdim=True) > 1e-3
    target = torch.where(mask, image, torch.full_like(image, c.background))
    return float(psnr(back["rgb"], target[None]).mean())


def score(model, size, scene_in, inputs, ev_scene, ev_ids, weights) -> dict:
    inp = scene_in.select(inputs)
    ev = ev_scene.select(ev_ids)
    gt, masks = evaluation_targets(ev_scene, ev_ids, (1.0, 1.0, 1.0))
    images = input_images(model, inp, (1.0, 1.0, 1.0))
    t = time.perf_counter()
    render = ModelRenderer(model, images, inp.cameras, size)
    render(ev.cameras[:1])
    infer = time.perf_counter() - t
    r = evaluate_views(render, ev.cameras, gt, inp.cameras, masks, lpips_weights=weights)
    return {"means": r["means"], "inference_seconds": infer,
            "self_consistency_psnr": self_consistency(model, render.images[0], render.cams[:1])}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="*", default=[], help="NAME=FOLDER of trained LRMs, in table order")
    ap.add_argument("--paired", metavar="REF", help="then print each household row's per-object difference to REF")
    ap.add_argument(
        "--pool-stats",
        action="store_true",
        help="print what the `pool` and `pool-curated` rows train on (instances, objects, ground truth)",
    )
    ap.add_argument("--objects", default="data/fewview-objects-mixed")
    ap.add_argument("--lego", default="../shared/data/lego")
    ap.add_argument("--llff", default="../shared/data/mary_rose")
    ap.add_argument("--n-objects", type=int, default=20)
    ap.add_argument("--protocols", nargs="+", default=["household-1view", "lego-3view", "llff-3view"])
    ap.add_argument("--out", default="bench-out/real3d")
    ap.add_argument("--lpips-weights", default="../shared/weights")
    args = ap.parse_args()
    weights = args.lpips_weights if Path(args.lpips_weights).exists() else None
    out = Path(args.out)
    # rows scored by earlier runs into the same OUT are kept; a row scored again is replaced
    previous = out / "real3d.json"
    record: dict = json.loads(previous.read_text()) if previous.is_file() else {"results": {}}
    record["command"] = " ".join(["python", *sys.argv])
    old = record.get("row_commands", {})
    if old and all(isinstance(v, str) for v in old.values()):  # the earlier layout: one command per row
        record["row_commands"] = {p: {n: c for n, c in old.items() if n in record["results"].get(p, {})}
                                  for p in record["results"]}  # fmt: skip
    rows = dict(r.split("=", 1) for r in args.rows)
    for name, folder in rows.items():
        model = from_pretrained(folder).eval()
        size = model_image_size(folder)
        for protocol in args.protocols:
            if protocol == "household-1view":
                card = json.loads((Path(args.objects) / "card.json").read_text())
                household = set(card.get("household", {}).get("models", {}))
                ids = [o for o in card["splits"]["test"] if str(o) in household]
                per = []
                for oi in ids[: args.n_objects]:
                    sc = load_object(args.objects, oi)
                    split = get_protocol("objects-1view")(oi, len(sc))
                    per.append(score(model, size, sc, list(split.inputs), sc, list(split.evaluation), weights))
                res = {"means": mean_metrics(per),
                       "per_object": [{"object": oi, **p["means"], "self_consistency_psnr": p["self_consistency_psnr"]}
                                      for oi, p in zip(ids[: len(per)], per, strict=True)],
                       "inference_seconds": float(np.mean([p["inference_seconds"] for p in per])),
                       "self_consistency_psnr": float(np.mean([p["self_consistency_psnr"] for p in per])),
                       "objects": len(per)}  # fmt: skip
            else:
                path = args.lego if protocol.startswith("lego") else args.llff
                if not Path(path).exists():
                    print(f"skipping {protocol}: {path} not found", flush=True)
                    continue
                scene_in, ev_scene, split = protocol_scenes(path, protocol)
                res = score(model, size, scene_in, list(split.inputs)[:1], ev_scene, list(split.evaluation), weights)
            record["results"].setdefault(protocol, {})[name] = res
            record.setdefault("row_commands", {}).setdefault(protocol, {})[name] = record["command"]
            m = res["means"]
            print(f"{protocol:16s} {name:16s} PSNR {m['psnr']:.2f}  SSIM {m['ssim']:.3f}  LPIPS "
                  f"{m.get('lpips_alex', float('nan')):.3f}  self-consistency {res['self_consistency_psnr']:.2f} dB  "
                  f"({res['inference_seconds']:.2f} s per image)", flush=True)  # fmt: skip
            out.mkdir(parents=True, exist_ok=True)
            (out / "real3d.json").write_text(json.dumps(record, indent=1))
    if rows:
        print(f"wrote {out / 'real3d.json'}; reproduce: {record['command']}")
    if args.paired:
        paired_report(record["results"].get("household-1view", {}), args.paired)
    if args.pool_stats:
        pool_stats(args.objects)
    return 0


def pool_stats(objects: str) -> None:
    """The single-view instances the pool rows read: cut out of the cluttered images, uncurated and curated."""
    from collections import Counter

    from fewview.train.data import PoolSingleViewSource

    for curated in (False, True):
        src = PoolSingleViewSource(objects, curated=curated)
        truth = Counter(str(t) for t in src.truth)
        print(f"{'pool-curated' if curated else 'pool':13s} {len(src.ids)} instances of {len(set(src.ids))} objects; "
              f"ground truth: {truth['clean']} clean, {truth['occluded']} occluded, {truth['truncated']} truncated",
              flush=True)  # fmt: skip


def paired_report(results: dict, ref: str) -> None:
    """Each row minus ``ref`` on the same household objects: the mean difference ± its standard error."""
    if "per_object" not in results.get(ref, {}):
        raise SystemExit(f"row {ref!r} has no per-object figures; score it again")
    base = {o["object"]: o for o in results[ref]["per_object"]}
    print(f"household-1view, paired against {ref} (mean difference ± standard error over objects)")
    for name, res in results.items():
        if name == ref or "per_object" not in res:
            continue
        cells = []
        for key, unit in (("psnr", "dB"), ("ssim", ""), ("lpips_alex", ""), ("self_consistency_psnr", "dB")):
            d = np.array([o[key] - base[o["object"]][key] for o in res["per_object"] if o["object"] in base])
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            cells.append(f"{key} {d.mean():+.3f} ± {se:.3f}{unit and ' ' + unit}")
        print(f"  {name:18s} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
