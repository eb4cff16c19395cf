"""Benchmark `ipsm`: IPSM's ablation table on 3 input views, against base 3DGS and SDS.

Rows (``--rows``): base (the Gaussian sparse preset, no prior), sds (+ SDS with the plain prior), rectified
(+ IPSM's first term only), ipsm (+ both score terms), ipsm+depth, ipsm+geometry, full (IPSM + depth +
geometry). Protocols: mary_rose llff-3view, lego-3view and objects-3view (held-out test objects of the mixed
fewview-objects set). PSNR / SSIM / LPIPS-alex means per row, wall time per scene; one JSON per run.
IPSM's weights are the official code's LLFF values, not tuned here; the step schedule is scaled to 1500 steps.

    python benchmarks/ipsm.py --objects data/fewview-objects-mixed --n-objects 20
    python benchmarks/ipsm.py --protocols lego-3view llff-3view --rows base sds full   # a subset
    python benchmarks/ipsm.py --protocols lego-3view-val objects-3view-val --rows full --set ipsm_w_difference=0.5

The ``-val`` protocols (lego's val views, the objects' val split) are where weights are chosen (``--set``
overrides any IPSMConfig field); the others are only reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from fewview.data import get_protocol
from fewview.evaluation import evaluate_views
from fewview.methods.ipsm import IPSMConfig
from fewview.methods.protocol_run import run_protocol
from fewview.methods.scene_fit import make_fitter
from fewview.objects.builder import load_object

OFF = dict(ipsm_w_depth=0.0, ipsm_w_depth_pseudo=0.0, ipsm_w_geometry=0.0)
ROWS = {
    "base": dict(ipsm_guidance="none", **OFF),
    "sds": dict(ipsm_guidance="sds", **OFF),
    "rectified": dict(ipsm_guidance="rectified", **OFF),
    "ipsm": dict(ipsm_guidance="ipsm", **OFF),
    "ipsm+depth": dict(ipsm_guidance="ipsm", ipsm_w_geometry=0.0),
    "ipsm+geometry": dict(ipsm_guidance="ipsm", ipsm_w_depth=0.0, ipsm_w_depth_pseudo=0.0),
    "full": dict(ipsm_guidance="ipsm"),
}


def objects_rows(root: str, ids: list[int], cfg: IPSMConfig, weights) -> dict:
    per = []
    for oi in ids:
        scene = load_object(root, oi)
        split = get_protocol("objects-3view")(oi, len(scene))
        t = time.perf_counter()
        state = make_fitter(scene, list(split.inputs), cfg).run(progress=False)
        ev = scene.select(list(split.evaluation))
        res = evaluate_views(state.render, ev.cameras, ev.composite(1.0), scene.select(list(split.inputs)).cameras,
                             lpips_weights=weights)  # fmt: skip
        per.append({**res["means"], "seconds": time.perf_counter() - t})
    keys = [k for k in per[0] if k != "seconds"]
    return {"means": {k: float(np.nanmean([p[k] for p in per])) for k in keys},
            "seconds": float(np.mean([p["seconds"] for p in per])), "objects": ids}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lego", default="../shared/data/lego")
    ap.add_argument("--llff", default="../shared/data/mary_rose")
    ap.add_argument("--objects", default="data/fewview-objects-mixed")
    ap.add_argument("--n-objects", type=int, default=20, help="held-out test objects for objects-3view")
    ap.add_argument("--protocols", nargs="+", default=["llff-3view", "lego-3view", "objects-3view"])
    ap.add_argument("--rows", nargs="+", default=list(ROWS))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--out", default="bench-out/ipsm")
    ap.add_argument("--lpips-weights", default="../shared/weights", help="LPIPS-alex weights file or folder")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="override IPSMConfig fields")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in IPSMConfig.__dataclass_fields__:
            raise SystemExit(f"--set {item}: IPSMConfig has no field {key!r}")
        kind = type(getattr(IPSMConfig(), key))
        overrides[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    weights = args.lpips_weights if Path(args.lpips_weights).exists() else None
    out = Path(args.out)
    record: dict = {"command": " ".join(["python", *sys.argv]), "overrides": overrides, "results": {}}
    for protocol in args.protocols:
        scene = {"lego-3view": args.lego, "lego-3view-val": args.lego, "llff-3view": args.llff,
                 "objects-3view": args.objects, "objects-3view-val": args.objects}[protocol]  # fmt: skip
        if not Path(scene).exists():
            print(f"skipping {protocol}: {scene} not found", flush=True)
            continue
        for row in args.rows:
            cfg = IPSMConfig(steps=args.steps, **{**ROWS[row], **overrides})
            t = time.perf_counter()
            if protocol.startswith("objects-3view"):
                card = json.loads((Path(scene) / "card.json").read_text())
                part = "val" if protocol.endswith("-val") else "test"
                res = objects_rows(scene, card["splits"][part][: args.n_objects], cfg, weights)
            else:
                rec = run_protocol(scene, protocol, out / protocol / row, cfg, progress=False, refit=True,
                                   lpips_weights=weights)  # fmt: skip
                res = {"means": rec["means"], "seconds": rec["fit_seconds"], "binned": rec["binned"]}
            res["wall_seconds"] = time.perf_counter() - t
            record["results"].setdefault(protocol, {})[row] = res
            m = res["means"]
            print(f"{protocol:14s} {row:14s} PSNR {m['psnr']:.2f}  SSIM {m['ssim']:.3f}  "
                  f"LPIPS {m.get('lpips_alex', float('nan')):.3f}  ({res['seconds']:.0f} s per scene)", flush=True)
            out.mkdir(parents=True, exist_ok=True)
            (out / "ipsm.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / 'ipsm.json'}; reproduce: {record['command']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
