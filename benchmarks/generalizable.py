"""Benchmark the generalizable models (pixelNeRF, EFT) against the per-scene no-prior fit.

1. objects-2view: the first ``--n-objects`` objects of the fewview-objects test split, per group (household
   models and the parametric/pybullet objects, when the set has both; each group is summarised). Each has 2
   inputs chosen by a permutation seeded with the object index and 30 evaluation views, at 64x64 on
   white. We report PSNR/SSIM/LPIPS per method, binned by angle to the nearest input. The no-prior
   row is the field fit with SPARSE_PRESET on the same 2 views.
2. lego-3view and llff-3view (mary_rose): out of distribution, 3 views. The models are evaluated with
   ``run_recon_protocol``; the no-prior rows come from ``benchmarks/sparse_baseline.py``.

    python benchmarks/generalizable.py --objects data/fewview-objects \
        --pixelnerf fewview/assets/models/pixelnerf --eft fewview/assets/models/eft
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fewview.checkpoint import environment_info
from fewview.data import get_protocol
from fewview.evaluation import evaluate_views, nan_to_none
from fewview.methods.fit import Fitter
from fewview.methods.fit_config import SPARSE_PRESET, FitConfig
from fewview.methods.recon import ModelRenderer, model_image_size, run_recon_protocol
from fewview.objects.builder import load_object
from fewview.train import from_pretrained


def mean_of(rows: list[dict], key: str) -> float:
    vals = [r["means"][key] for r in rows if r["means"].get(key) is not None]
    return float(np.mean(vals)) if vals else float("nan")


def binned_mean(rows: list[dict]) -> dict:
    acc: dict[str, list] = {}
    for r in rows:
        for b, v in r["binned"].items():
            acc.setdefault(b, []).append((v["psnr"], v["count"]))
    return {b: float(np.average([p for p, _ in v], weights=[c for _, c in v])) for b, v in acc.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", default="data/fewview-objects", help="fewview-objects folder (test split)")
    ap.add_argument("--pixelnerf", default="fewview/assets/models/pixelnerf")
    ap.add_argument("--eft", default="fewview/assets/models/eft")
    ap.add_argument("--lego", default="../shared/data/lego")
    ap.add_argument("--llff", default="../shared/data/mary_rose")
    ap.add_argument("--n-objects", type=int, default=20)
    ap.add_argument("--fit-steps", type=int, default=500, help="steps of the no-prior fit per object")
    ap.add_argument("--no-baseline", action="store_true", help="skip the no-prior fits (models only)")
    ap.add_argument("--out", default="bench-out/generalizable")
    ap.add_argument("--lpips-weights", default=None, help="LPIPS-alex weights (default: discovery, shipped)")
    args = ap.parse_args()
    weights = args.lpips_weights
    out = Path(args.out)
    t_start = time.perf_counter()
    card = json.loads((Path(args.objects) / "card.json").read_text())
    household = set(card.get("household", {}).get("models", {}))
    groups = {"household": [i for i in card["splits"]["test"] if str(i) in household][: args.n_objects],
              "parametric": [i for i in card["splits"]["test"] if str(i) not in household][: args.n_objects]}
    groups = {k: v for k, v in groups.items() if v}
    test_ids = [i for v in groups.values() for i in v]
    skipped = []
    models = {}
    for name, p in (("pixelnerf", args.pixelnerf), ("eft", args.eft)):
        if Path(p, "config.json").exists():
            models[name] = from_pretrained(p)
        else:
            skipped.append(f"{name}: no pretrained folder at {p}")
            print(f"skipped {skipped[-1]}", flush=True)
    sizes = {name: model_image_size(p) for name, p in (("pixelnerf", args.pixelnerf), ("eft", args.eft))}
    rows: dict[str, list[dict]] = {k: [] for k in [*models, *([] if args.no_baseline else ["no-prior"])]}
    seconds: dict[str, float] = {k: 0.0 for k in rows}
    bg = (1.0, 1.0, 1.0)
    for oi in test_ids:
        scene = load_object(args.objects, oi)
        split = get_protocol("objects-2view")(oi, len(scene))
        inputs = scene.select(list(split.inputs))
        ev = scene.select(list(split.evaluation))
        gt = ev.composite(bg)
        for name, model in models.items():
            t = time.perf_counter()
            r = ModelRenderer(model, inputs.composite(bg), inputs.cameras, sizes[name])
            res = evaluate_views(r, ev.cameras, gt, inputs.cameras, lpips_weights=weights)
            seconds[name] += time.perf_counter() - t
            rows[name].append({"object": oi, "means": res["means"], "binned": res["binned"]})
        if not args.no_baseline:
            t = time.perf_counter()
            cfg = FitConfig(**SPARSE_PRESET, steps=args.fit_steps, upsample_step=args.fit_steps // 3)
            state = Fitter(scene, list(split.inputs), cfg, None).run(progress=False)
            seconds["no-prior"] += time.perf_counter() - t
            res = evaluate_views(state.render, ev.cameras, gt, inputs.cameras, lpips_weights=weights)
            rows["no-prior"].append({"object": oi, "means": res["means"], "binned": res["binned"]})
        line = "  ".join(f"{k} {v[-1]['means']['psnr']:.2f}" for k, v in rows.items())
        print(f"object {oi}: {line}", flush=True)
    summary = {}
    for g, ids in {"all": test_ids, **groups}.items():
        summary[g] = {
            k: {"psnr": mean_of(sel, "psnr"), "ssim": mean_of(sel, "ssim"), "lpips_alex": mean_of(sel, "lpips_alex"),
                "psnr_by_angle": binned_mean(sel), "objects": len(sel)}
            for k, v in rows.items() for sel in [[r for r in v if r["object"] in ids]]
        }  # fmt: skip
        for k, s in summary[g].items():
            bins = "  ".join(f"{b}: {p:.2f}" for b, p in s["psnr_by_angle"].items())
            print(f"objects-2view [{g}, {s['objects']} objects] {k:10s} PSNR {s['psnr']:.2f}  SSIM {s['ssim']:.3f}  "
                  f"LPIPS {s['lpips_alex']:.3f}  | by angle {bins}", flush=True)  # fmt: skip
    print("seconds: " + "  ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    ood = []
    for scene, protocol in ((args.lego, "lego-3view"), (args.llff, "llff-3view")):
        if not Path(scene).exists():
            skipped.append(f"{protocol}: scene {scene} not found")
            print(f"skipped {skipped[-1]}", flush=True)
            continue
        for name in models:
            p = args.pixelnerf if name == "pixelnerf" else args.eft
            rec = run_recon_protocol(scene, protocol, out / protocol / name, p, progress=False, lpips_weights=weights)
            ood.append({"protocol": protocol, "method": name, "means": rec["means"], "binned": rec["binned"]})
            print(f"{protocol} {name}: PSNR {rec['means']['psnr']:.2f} SSIM {rec['means']['ssim']:.3f}", flush=True)
    record = {
        "protocol": "objects-2view",
        "objects": test_ids,
        "groups": groups,
        "summary": summary,
        "seconds": seconds,
        "skipped": skipped,
        "per_object": rows,
        "out_of_distribution": ood,
        "models": {"pixelnerf": args.pixelnerf, "eft": args.eft},
        "wall_seconds": time.perf_counter() - t_start,
        "env": environment_info(),
        "command": " ".join([sys.executable, *sys.argv]),
        "threads": torch.get_num_threads(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "generalizable.json").write_text(json.dumps(nan_to_none(record), indent=1))
    print(f"wrote {out / 'generalizable.json'}; reproduce: {' '.join(['python', *sys.argv])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
