"""Benchmark `sparse baseline`: the per-scene fit with no prior, from 3 views (lego-3view, llff-3view).

These are the "no prior" rows every learned method must beat. PSNR/SSIM/LPIPS means, binned by
the angle to the nearest input view, per-view values, wall time and peak memory go to one JSON per
scene; the report.html beside it shows inputs | prediction | ground truth.

    python benchmarks/sparse_baseline.py --lego ../shared/data/lego --llff ../shared/data/mary_rose
    python benchmarks/sparse_baseline.py --representation gaussians   # the same with 3D Gaussians
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fewview.methods.fit_config import GAUSSIAN_SPARSE_PRESET, SPARSE_PRESET, FitConfig
from fewview.methods.protocol_run import run_protocol
from fewview.metrics import format_metrics


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lego", default="../shared/data/lego")
    ap.add_argument("--llff", default="../shared/data/mary_rose")
    ap.add_argument("--out", default="bench-out/sparse-baseline")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--representation", default="grid", help="grid (field preset) or gaussians")
    ap.add_argument("--lpips-weights", default="../shared/weights", help="LPIPS-alex weights file or folder")
    args = ap.parse_args()
    if args.representation == "gaussians":
        cfg = FitConfig(**GAUSSIAN_SPARSE_PRESET, steps=args.steps)
    else:
        cfg = FitConfig(**SPARSE_PRESET, steps=args.steps, upsample_step=args.steps // 3)
    weights = args.lpips_weights if Path(args.lpips_weights).exists() else None
    rows = []
    for scene, protocol in ((args.lego, "lego-3view"), (args.llff, "llff-3view")):
        if not scene or not Path(scene).exists():
            print(f"skipping {protocol}: {scene} not found")
            continue
        out = Path(args.out) / args.representation / protocol
        rec = run_protocol(scene, protocol, out, cfg, progress=False, refit=True, lpips_weights=weights)
        bins = "  ".join(f"{k}: {v['psnr']:.2f}" for k, v in rec["binned"].items())
        name = f"{protocol} ({Path(scene).name}) no-prior {args.representation} fit"
        line = f"{name}: {format_metrics(rec['means'])}  | PSNR by angle {bins}"
        print(line, flush=True)
        rows.append({"protocol": protocol, "representation": args.representation, "scene": scene,
                     "means": rec["means"], "binned": rec["binned"], "fit_seconds": rec["fit_seconds"],
                     "peak_memory_mb": rec["peak_memory_mb"]})  # fmt: skip
    summary = Path(args.out) / args.representation / "summary.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps({"rows": rows, "command": " ".join([sys.executable, *sys.argv])}, indent=1))
    print(
        f"wrote {summary}; reproduce: python benchmarks/sparse_baseline.py --lego {args.lego} --llff {args.llff} "
        f"--steps {args.steps} --representation {args.representation}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
