"""Where a SparseFusion distillation step spends its CPU time: torch.profiler over a few steps after the grid's
upsampling (the costliest phase), with the operators grouped by the part of the pipeline they belong to.

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

# Operators by where they run: the field's colour MLP (matrix products on the samples and its ReLU backward), the
# grid lookups (gathers and their scatter-add backward), the diffusion model's network, the rest.
GROUPS = {
    "colour MLP": ("aten::mm", "aten::threshold_backward", "aten::addmm"),
    "grid gathers": ("aten::scatter_add_", "aten::index", "aten::_embedding_bag", "aten::_index_put_impl_",
                     "aten::index_add_"),  # fmt: skip
    "diffusion network": ("aten::_slow_conv2d_forward", "aten::mkldnn_convolution", "aten::native_group_norm",
                          "aten::silu", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu"),  # fmt: skip
}


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
    ops = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ops)
    shares = {g: sum(e.self_cpu_time_total for e in ops if e.key in names) / total for g, names in GROUPS.items()}
    shares["other"] = 1 - sum(shares.values())
    print("share of self CPU time: " + ", ".join(f"{g} {s:.0%}" for g, s in shares.items()))
    print(ops.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
