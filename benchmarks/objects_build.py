"""Benchmark fewview-objects: build throughput and multi-view consistency.

Prints objects per minute at 64x64 and 128x128 (32 views each) on this machine, the projected
time of the default recipe (2112 objects x 32 views at 64x64), and the test PSNR of a per-scene
field fitted to 28 views of one object and evaluated on its 4 held-out views (a consistent
dataset lets a field fit it closely).

    python benchmarks/objects_build.py --out bench-out/objects
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fewview.evaluation import evaluate_views
from fewview.methods.fit import Fitter
from fewview.methods.fit_config import FitConfig
from fewview.metrics import format_metrics
from fewview.objects.builder import ObjectsConfig, build, load_object


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-out/objects")
    ap.add_argument("--objects", type=int, default=32, help="objects per timing run (4 per category)")
    ap.add_argument("--lpips-weights", default="../shared/weights", help="LPIPS-alex weights file or folder")
    args = ap.parse_args()
    out = Path(args.out)
    record = {"command": " ".join([sys.executable, *sys.argv])}
    build(ObjectsConfig(objects=2, views=2, res=16), out / "warmup", progress=False)  # numba compile
    for res in (64, 128):
        cfg = ObjectsConfig(objects=args.objects, views=32, res=res)
        t = time.perf_counter()
        build(cfg, out / f"res{res}", progress=False)
        per_min = args.objects / (time.perf_counter() - t) * 60
        record[f"objects_per_min_{res}"] = per_min
        print(
            f"{res}x{res}, 32 views: {per_min:.0f} objects/min; "
            f"the 2112-object recipe would take {2112 / per_min:.1f} min"
        )
    scene = load_object(out / "res64", 0)
    held_out = [0, 8, 16, 24]
    inputs = [i for i in range(len(scene)) if i not in held_out]
    fit = Fitter(
        scene, inputs, FitConfig(steps=1500, grid_res=48, grid_res_final=96, upsample_step=500, w_rgb_per_sample=0.1)
    )
    fit.run(progress=False)
    ev = scene.select(held_out)
    weights = args.lpips_weights if Path(args.lpips_weights).exists() else None
    res = evaluate_views(fit.state.render, ev.cameras, ev.composite(1.0), fit.train.cameras, lpips_weights=weights)
    record["fit_28_views_object0"] = {"category": scene.meta["category"], **res["means"]}
    print(f"per-scene field on 28 views of object 0 ({scene.meta['category']}), 4 held-out views: "
          f"{format_metrics(res['means'])}")  # fmt: skip
    (out / "objects_build.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / 'objects_build.json'}; reproduce: python benchmarks/objects_build.py --out {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
