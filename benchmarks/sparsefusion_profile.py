"""Where a SparseFusion distillation step spends its CPU time: torch.profiler over a few steps after the grid's
upsampling (the costliest phase): seconds per step by phase and the operators that take the most time.

    python benchmarks/sparsefusion_profile.py --steps 12
    python benchmarks/sparsefusion_profile.py --fit-steps 400 --run-first 140 --split val --steps 6  # a fitted field

The fit is fewview's default (the paper's 1500 steps, at most 10 PLMS steps per denoise; ``--set
sf_max_denoise_steps=50`` for the paper's cap) on the first held-out object of objects-2view; the profiled steps
start at ``upsample_step``, past the EFT bootstrap, on the field as initialised. ``--run-first N`` instead fits the
first N steps (the bootstrap, the upsampling) and profiles the field they leave; the profiled steps' sample weights
are then tallied against colour thresholds: the share of samples a threshold would still colour and the share of the
rendered weight it would leave uncoloured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from fewview.data import get_protocol
from fewview.evaluation import config_overrides
from fewview.methods.sparsefusion import SparseFusionConfig, SparseFusionFitter
from fewview.objects.builder import load_object
from fewview.render import occupancy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", default="data/fewview-objects-mixed")
    ap.add_argument("--steps", type=int, default=12, help="steps profiled")
    ap.add_argument("--rows", type=int, default=25, help="operators listed")
    ap.add_argument("--fit-steps", type=int, default=SparseFusionConfig.steps, help="the schedule's steps")
    ap.add_argument("--run-first", type=int, default=0, help="fit this many steps first (0: jump to the upsampling)")
    ap.add_argument("--unet", action="store_true", help="also time single UNet calls (batch 1 and 2, 1 and 2 threads)")
    ap.add_argument("--split", default="test", choices=["test", "val"], help="the object: first test or val object")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="override SparseFusionConfig fields")
    args = ap.parse_args()
    try:
        overrides = config_overrides(SparseFusionConfig, args.set)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    card = json.loads((Path(args.objects) / "card.json").read_text())
    oi = card["splits"][args.split][0]
    scene = load_object(args.objects, oi)
    split = get_protocol("objects-2view")(oi, len(scene))
    cfg = SparseFusionConfig(**{"steps": args.fit_steps, "upsample_step": args.fit_steps // 3, **overrides})
    fitter = SparseFusionFitter(scene, list(split.inputs), cfg)
    weights = []
    if args.run_first:
        for _ in range(args.run_first):
            fitter.train_step()
        tally = occupancy.weights_packed

        def kept(*a):
            w = tally(*a)
            weights.append(w.detach())
            return w

        occupancy.weights_packed = kept
        fitter.train_step()  # one step tallied outside the profiler
        occupancy.weights_packed = tally
    else:
        fitter.step = cfg.upsample_step
        for _ in range(3):  # the upsampling step and two warm-up steps
            fitter.train_step()
    if weights:
        w = torch.cat(weights)
        for thr in (1e-4, 1e-3, 3e-3, 1e-2):
            on = w > thr
            print(f"colour threshold {thr:g}: {float(on.float().mean()):.3f} of {len(w)} samples coloured, "
                  f"{float(w[~on].sum() / w.sum()):.4f} of the weight left uncoloured")
    fitter.timings = {}
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            fitter.train_step()
    wall = (time.perf_counter() - t0) / args.steps
    phases = ", ".join(f"{k} {v / args.steps:.3f}" for k, v in fitter.timings.items())
    print(f"{wall:.2f} s per step under the profiler; seconds per step by phase: {phases}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if args.unet:
        unet_calls(fitter.vldm, fitter.cond[0])
    return 0


@torch.no_grad()
def unet_calls(vldm, cond: torch.Tensor, n: int = 50) -> None:
    """Milliseconds per denoiser call as the PLMS steps make it (batch 1), at batch 2 and on 1 and 2 threads."""
    threads = torch.get_num_threads()
    z = torch.randn(1, vldm.config.latent_channels, *cond.shape[-2:])
    for b in (1, 2):
        for k in sorted({1, threads}):
            torch.set_num_threads(k)
            x, c = z.expand(b, -1, -1, -1), {"concat": cond.expand(b, -1, -1, -1)}
            for _ in range(5):
                vldm.predict(x, 500, c)
            t0 = time.perf_counter()
            for _ in range(n):
                vldm.predict(x, 500, c)
            print(f"UNet call, batch {b}, {k} thread(s): {(time.perf_counter() - t0) / n * 1000:.1f} ms")
    torch.set_num_threads(threads)


if __name__ == "__main__":
    raise SystemExit(main())
