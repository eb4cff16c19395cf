"""Benchmark `ipsm`: IPSM's ablation table on 3 input views, against base 3DGS and SDS.

Rows (``--rows``): base (the Gaussian sparse preset, no prior), sds (+ SDS with the plain prior), rectified
(+ IPSM's first term only), ipsm (+ both score terms), ipsm+depth, ipsm+geometry, full (IPSM + depth +
geometry). Protocols: mary_rose llff-3view, lego-3view and objects-3view (held-out test objects of the mixed
fewview-objects set). PSNR / SSIM / LPIPS-alex means per row, wall time per scene; one JSON per run.
IPSMConfig's score weights were chosen on the -val protocols below (docs/ipsm.md); the schedule is scaled to 1500 steps.

    python benchmarks/ipsm.py --objects data/fewview-objects-mixed --n-objects 20
    python benchmarks/ipsm.py --protocols lego-3view llff-3view --rows base sds full   # a subset
    python benchmarks/ipsm.py --protocols lego-3view-val objects-3view-val --rows full --set ipsm_w_difference=0.5

The ``-val`` protocols (lego's val views, the objects' val split) are where weights are chosen (``--set``
overrides any IPSMConfig field); the others are only reported. Every scene's figures are kept in
``OUT/scenes/PROTOCOL/ROW@steps=N[@FIELD=VALUE...]@cfg=HASH/SCENE.json`` and reused by later runs with the same ``OUT``,
so a long table can be filled over several runs; the printed line says how many scenes its means cover.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fewview.data import get_protocol
from fewview.evaluation import cached_figures, config_overrides, evaluate_views, mean_figures, settings_folder
from fewview.methods.ipsm import IPSMConfig
from fewview.methods.protocol_run import evaluation_targets, protocol_scenes
from fewview.methods.scene_fit import make_fitter
from fewview.metrics import format_metrics
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


def score(scene_in, inputs: list[int], ev_scene, ev_ids: list[int], cfg: IPSMConfig, weights) -> dict:
    t = time.perf_counter()
    fitter = make_fitter(scene_in, inputs, cfg)
    render = fitter.run(progress=False).render
    seconds = time.perf_counter() - t
    gt, masks = evaluation_targets(ev_scene, tuple(ev_ids), cfg.background)
    ev = ev_scene.select(ev_ids)
    res = evaluate_views(render, ev.cameras, gt, scene_in.select(inputs).cameras, masks, lpips_weights=weights)
    return {"means": res["means"], "binned": res["binned"], "seconds": seconds,
            "timings": dict(getattr(fitter, "timings", {}))}  # fmt: skip


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
    try:
        overrides = config_overrides(IPSMConfig, args.set)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
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
            cache = out / "scenes" / protocol / settings_folder(row, {"steps": args.steps, **overrides}, cfg)
            if protocol.startswith("objects-3view"):
                card = json.loads((Path(scene) / "card.json").read_text())
                per = []
                for oi in card["splits"]["val" if protocol.endswith("-val") else "test"][: args.n_objects]:
                    obj = load_object(scene, oi)
                    split = get_protocol("objects-3view")(oi, len(obj))
                    per.append(cached_figures(cache / f"{oi}.json", score, obj, list(split.inputs), obj,
                                              list(split.evaluation), cfg, weights))  # fmt: skip
                res = mean_figures(per)
            else:
                scene_in, ev_scene, split = protocol_scenes(scene, protocol)
                res = cached_figures(cache / f"{Path(scene).name}.json", score, scene_in, list(split.inputs), ev_scene,
                                     list(split.evaluation), cfg, weights)  # fmt: skip
                res = {**res, "scenes": 1}
            record["results"].setdefault(protocol, {})[row] = res
            m = res["means"]
            print(f"{protocol:14s} {row:14s} {format_metrics(m)}  ({res['seconds']:.0f} s per scene, "
                  f"{res['scenes']} scenes)", flush=True)  # fmt: skip
            out.mkdir(parents=True, exist_ok=True)
            (out / "ipsm.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / 'ipsm.json'}; reproduce: {record['command']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
