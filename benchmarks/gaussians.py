"""Benchmark `dense lego` with 3D Gaussians, and the rasterizer's throughput against its reference.

1. Protocol lego-dense (100 inputs, test r_0..r_24, 128x128, white): a Gaussian fit with a wall-time
   budget (default 300 s of optimisation; 5 probe views every 30 s, excluded from the timing), then
   PSNR/SSIM/LPIPS on the 25 test views, time to 25 and 28 dB, Gaussian count, peak memory.
2. Rasterizer throughput at 128x128 with 20k Gaussians, forward + backward (SH degree 3, RGB + depth +
   alpha), for the numba fast path and the pure-PyTorch reference in the same run, on two sets: the
   fitted lego Gaussians (a random 20k subset) and 20k random Gaussians in the lego box.

    python benchmarks/gaussians.py --data ../shared/data/lego --out bench-out/gaussians
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from dense_lego import timed_fit

from fewview.checkpoint import environment_info
from fewview.data import get_protocol, load_blender
from fewview.evaluation import evaluate_views, nan_to_none
from fewview.gaussians import GaussianModel, rasterize
from fewview.methods.fit_config import FitConfig
from fewview.methods.protocol_run import peak_memory_mb
from fewview.metrics import format_metrics


def raster_seconds(model: GaussianModel, cam, backend: str, reps: int) -> float:
    """Mean seconds of one forward + backward render of ``model`` from ``cam``."""
    params = [p.detach().clone().requires_grad_() for p in (model.means, model.quats, model.scales,
                                                             model.opacities, model.sh)]  # fmt: skip

    def once():
        r = rasterize(*params, cam, sh_degree=3, background=(1.0, 1.0, 1.0), backend=backend)
        (r.rgb.sum() + r.depth.sum() + r.alpha.sum()).backward()
        for p in params:
            p.grad = None

    once()
    t = time.perf_counter()
    for _ in range(reps):
        once()
    return (time.perf_counter() - t) / reps


def throughput(model: GaussianModel, cam, reps_fast: int = 20, reps_ref: int = 3) -> dict:
    fast = raster_seconds(model, cam, "numba", reps_fast)
    ref = raster_seconds(model, cam, "torch", reps_ref)
    return {"gaussians": len(model), "fast_ms": 1e3 * fast, "reference_ms": 1e3 * ref, "ratio": ref / fast,
            "fast_renders_per_s": 1 / fast}  # fmt: skip


def subset(model: GaussianModel, n: int, seed: int = 0) -> GaussianModel:
    idx = torch.randperm(len(model), generator=torch.Generator().manual_seed(seed))[:n]
    return GaussianModel.from_tensors({k: v[idx] for k, v in model.tensors().items()})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/lego")
    ap.add_argument("--out", default="bench-out/gaussians")
    ap.add_argument("--budget", type=float, default=300.0, help="optimisation seconds")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--lpips-weights", default="../shared/weights", help="LPIPS-alex weights file or folder")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    train = load_blender(args.data, "train")
    test = load_blender(args.data, "test")
    split = get_protocol("lego-dense")(len(train))
    test = test.select(list(split.evaluation))
    print(f"protocol lego-dense: {len(split.inputs)} input views, {len(test)} test views, 128x128, white")
    cfg = FitConfig(representation="gaussians", steps=args.steps)
    fit, curve, reached, fit_s = timed_fit(
        train, list(split.inputs), cfg, test, [0, 6, 12, 18, 24], (25.0, 28.0), args.budget, 30.0, "gaussians"
    )
    weights = args.lpips_weights if Path(args.lpips_weights).exists() else None
    result = evaluate_views(
        fit.state.render, test.cameras, test.composite(1.0), train.cameras, None, out, None, lpips_weights=weights
    )
    print(f"gaussians after {fit_s:.0f} s ({fit.step} steps, {len(fit.state.model)} Gaussians): "
          f"{format_metrics(result['means'])}", flush=True)  # fmt: skip

    cam = test.cameras[0]
    fitted = subset(fit.state.model, 20000)
    aabb = torch.stack([fit.state.model.means.detach().amin(0), fit.state.model.means.detach().amax(0)])
    rand = GaussianModel.random_in_box(20000, aabb, torch.Generator().manual_seed(0), opacity=0.5)
    tp = {"fitted_lego_20k": throughput(fitted, cam), "random_20k": throughput(rand, cam)}
    for k, v in tp.items():
        print(f"rasterizer 128x128 {k}: fast {v['fast_ms']:.1f} ms, reference {v['reference_ms']:.0f} ms "
              f"(fwd+bwd) -> {v['ratio']:.1f}x", flush=True)  # fmt: skip
    record = {
        "protocol": "lego-dense",
        "method": "fit-gaussians",
        "scene": str(args.data),
        "input_views": list(split.inputs),
        "evaluation_views": list(split.evaluation),
        "background": [1.0, 1.0, 1.0],
        "means": result["means"],
        "binned": result["binned"],
        "per_view": result["per_view"],
        "fit": {
            "train_seconds": fit_s,
            "steps": fit.step,
            "gaussians": len(fit.state.model),
            "curve": curve,
            "time_to": reached,
        },  # fmt: skip
        "rasterizer_128": tp,
        "wall_seconds": time.perf_counter() - t_start,
        "peak_memory_mb": peak_memory_mb(),
        "device": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "env": environment_info(),
        "command": " ".join([sys.executable, *sys.argv]),
    }
    (out / "gaussians.json").write_text(json.dumps(nan_to_none(record), indent=1))
    print(
        f"lego-dense gaussians: PSNR {result['means']['psnr']:.2f} SSIM {result['means']['ssim']:.3f} after "
        f"{fit_s:.0f} s; time to 25 dB {reached.get(25.0, float('nan')):.0f} s, to 28 dB "
        f"{reached.get(28.0, float('nan')):.0f} s; peak {record['peak_memory_mb']:.0f} MB"
    )
    print(f"wrote {out / 'gaussians.json'}; reproduce: python benchmarks/gaussians.py --data {args.data}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
