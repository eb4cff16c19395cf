"""Where a SparseFusion distillation step spends its CPU time: torch.profiler over a few steps after the grid's
upsampling (the costliest phase): seconds per step by phase and the operators that take the most time.

    python benchmarks/sparsefusion_profile.py --steps 12

The fit is fewview's default (the paper's schedule: 1500 steps, at most 50 PLMS steps per denoise) on the first
held-out object of objects-2view; the profiled steps start at ``upsample_step``, past the EFT bootstrap.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from fewview.data import get_protocol
from fewview.methods.sparsefusion import SparseFusionConfig, SparseFusionFitter
from fewview.objects.builder import load_object


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", default="data/fewview-objects-mixed")
    ap.add_argument("--steps", type=int, default=12, help="steps profiled")
    ap.add_argument("--rows", type=int, default=25, help="operators listed")
    args = ap.parse_args()
    card = json.loads((Path(args.objects) / "card.json").read_text())
    oi = card["splits"]["test"][0]
    scene = load_object(args.objects, oi)
    split = get_protocol("objects-2view")(oi, len(scene))
    cfg = SparseFusionConfig()
    fitter = SparseFusionFitter(scene, list(split.inputs), cfg)
    fitter.step = cfg.upsample_step
    for _ in range(3):  # the upsampling step and two warm-up steps
        fitter.train_step()
    fitter.timings = {}
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            fitter.train_step()
    wall = (time.perf_counter() - t0) / args.steps
    phases = ", ".join(f"{k} {v / args.steps:.3f}" for k, v in fitter.timings.items())
    print(f"{wall:.2f} s per step under the profiler; seconds per step by phase: {phases}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
