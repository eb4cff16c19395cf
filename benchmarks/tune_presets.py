"""Choose the sparse-view presets on validation data, never on the views they are reported on.

Each candidate for ``SPARSE_PRESET`` (field) and ``GAUSSIAN_SPARSE_PRESET`` (3D Gaussians) is fitted on
validation scenes: lego's 3 input views evaluated on its *val* split (``lego-3view-val``) and the first
objects of the fewview-objects *val* split (``objects-3view``, parametric and household). The candidate
with the best mean validation PSNR (lego and the objects' mean weighted equally) is the preset;
``benchmarks/sparse_baseline.py`` then reports it on lego-3view's test views and mary_rose, held out.

    python benchmarks/tune_presets.py --objects data/fewview-objects-mixed --out bench-out/tune
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
from fewview.methods.fit_config import FitConfig
from fewview.methods.protocol_run import run_protocol
from fewview.methods.scene_fit import make_fitter
from fewview.objects.builder import load_object

FIELD = dict(grid_res=48, grid_res_final=96, w_rgb_per_sample=0.1, w_entropy=1e-3)
CANDIDATES = {
    "grid": {
        "plain": FIELD,
        "silhouette": {**FIELD, "w_silhouette": 1.0},
        "silhouette+tv": {**FIELD, "w_silhouette": 1.0, "w_tv": 1e-2},
        "silhouette+tv+distortion": {**FIELD, "w_silhouette": 1.0, "w_tv": 1e-2, "w_distortion": 1e-2},
        "silhouette+tv0.05": {**FIELD, "w_silhouette": 1.0, "w_tv": 5e-2},
    },
    "gaussians": {
        f"opacity{w}": dict(representation="gaussians", w_silhouette=1.0, gs_hull_prune=True, gs_w_opacity=w,
                            gs_reset_every=500)  # fmt: skip
        for w in (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)
    },
}


def objects_psnr(root: str, ids: list[int], cfg: FitConfig) -> list[float]:
    out = []
    for oi in ids:
        scene = load_object(root, oi)
        split = get_protocol("objects-3view")(oi, len(scene))
        fit = make_fitter(scene, list(split.inputs), cfg)
        state = fit.run(progress=False)
        ev = scene.select(list(split.evaluation))
        res = evaluate_views(state.render, ev.cameras, ev.composite(1.0), fit.train.cameras, lpips=False)
        out.append(res["means"]["psnr"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lego", default="../shared/data/lego")
    ap.add_argument("--objects", default="data/fewview-objects-mixed", help="fewview-objects folder (val split)")
    ap.add_argument("--n-objects", type=int, default=2, help="val objects per group (parametric, household)")
    ap.add_argument("--representation", nargs="+", default=["grid", "gaussians"])
    ap.add_argument("--steps-grid", type=int, default=1000)
    ap.add_argument("--steps-gaussians", type=int, default=1500)
    ap.add_argument("--out", default="bench-out/tune")
    ap.add_argument("--only", nargs="+", help="fit only these candidates, merged into --out's earlier record")
    args = ap.parse_args()
    card = json.loads((Path(args.objects) / "card.json").read_text())
    household = set(card.get("household", {}).get("models", {}))
    val = card["splits"]["val"]
    ids = [i for i in val if str(i) not in household][: args.n_objects]
    ids += [i for i in val if str(i) in household][: args.n_objects]
    record: dict = {"objects": ids, "commands": [" ".join(["python", *sys.argv])], "results": {}}
    earlier = Path(args.out) / "tune_presets.json"
    if args.only and earlier.is_file():
        old = json.loads(earlier.read_text())
        if old["objects"] != ids:
            raise SystemExit(f"{earlier} was made on other objects ({old['objects']}); use another --out")
        record["results"], record["commands"] = old["results"], old.get("commands", []) + record["commands"]
    for rep in args.representation:
        steps = args.steps_grid if rep == "grid" else args.steps_gaussians
        rows = dict(record["results"].get(rep, {}).get("candidates", {}))
        if rows and record["results"][rep]["steps"] != steps:
            raise SystemExit(f"{earlier} used {record['results'][rep]['steps']} steps for {rep}, not {steps}")
        for name, preset in CANDIDATES[rep].items():
            if args.only and name not in args.only:
                continue
            cfg = FitConfig(**{**preset, "steps": steps, **({"upsample_step": steps // 3} if rep == "grid" else {})})
            t = time.perf_counter()
            lego = run_protocol(args.lego, "lego-3view-val", Path(args.out) / rep / name, cfg, progress=False,
                                lpips=False, refit=True)["means"]["psnr"]  # fmt: skip
            objs = objects_psnr(args.objects, ids, cfg)
            score = (lego + float(np.mean(objs))) / 2
            rows[name] = {"preset": preset, "lego_val": lego, "objects_val": objs, "score": score,
                          "seconds": time.perf_counter() - t}  # fmt: skip
            print(f"{rep} {name:28s} lego val {lego:.2f}  objects val {np.mean(objs):.2f} "
                  f"({', '.join(f'{p:.2f}' for p in objs)})  score {score:.2f}", flush=True)  # fmt: skip
        best = max(rows, key=lambda k: rows[k]["score"])
        record["results"][rep] = {"candidates": rows, "best": best, "steps": steps}
        print(f"{rep}: best on validation: {best} {CANDIDATES[rep][best]}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune_presets.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / 'tune_presets.json'}; reproduce: {' && '.join(record['commands'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
