"""Benchmark `dense lego` (protocol lego-dense): per-scene field quality against wall time on this machine.

Reports, in one run: the default grid field's test PSNR/SSIM/LPIPS on r_0..r_24 after a fixed time
budget, its time to 25 and 28 dB, the MLP NeRF's time to 25 dB (or a lower bound if it does not get
there within its cap) and the speed ratio, field throughput (samples/s, forward + backward), peak
memory. Progress checks render 5 test views and are excluded from the timings.

    python benchmarks/dense_lego.py --data ../shared/data/lego --out bench-out/dense-lego
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from fewview.checkpoint import environment_info
from fewview.data import get_protocol, load_blender
from fewview.evaluation import evaluate_views, nan_to_none
from fewview.fields import DenseGridField, HashGridField, MLPField
from fewview.methods.fit_config import FitConfig
from fewview.methods.protocol_run import peak_memory_mb
from fewview.methods.scene_fit import make_fitter
from fewview.metrics import format_metrics, psnr


def timed_fit(train, inputs, cfg, test, probe_views, targets, budget_s, every_s, label):
    """Train until ``cfg.steps`` or ``budget_s`` seconds of optimisation; probe PSNR every ``every_s``."""
    f = make_fitter(train, inputs, cfg, None)
    gt = test.composite(1.0)
    curve, reached, train_s, next_probe = [], {}, 0.0, every_s
    while f.step < cfg.steps and train_s < budget_s:
        t = time.perf_counter()
        f.train_step()
        train_s += time.perf_counter() - t
        if train_s >= next_probe or f.step == cfg.steps:
            next_probe += every_s
            p = float(
                torch.stack(
                    [psnr(f.state.render(test.cameras[i])["rgb"][None], gt[i : i + 1]) for i in probe_views]
                ).mean()
            )
            curve.append({"seconds": round(train_s, 1), "step": f.step, "psnr_probe": round(p, 2)})
            print(f"  [{label}] {train_s:6.1f} s  step {f.step:5d}  probe PSNR {p:.2f}", flush=True)
            for tgt in targets:
                if p >= tgt and tgt not in reached:
                    reached[tgt] = train_s
    return f, curve, reached, train_s


def throughput(field_ctor, n: int = 131072, reps: int = 5) -> float:
    """Samples per second for density + colour, forward and backward, at random points in the box."""
    field = field_ctor()
    x = torch.rand(n, 3) * 2 - 1
    d = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    for _ in range(2):
        s, c = field(x, d)
        (s.sum() + c.sum()).backward()
    t = time.perf_counter()
    for _ in range(reps):
        s, c = field(x, d)
        (s.sum() + c.sum()).backward()
    return n * reps / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/lego")
    ap.add_argument("--out", default="bench-out/dense-lego")
    ap.add_argument("--budget", type=float, default=240.0, help="grid field optimisation seconds")
    ap.add_argument("--mlp-budget", type=float, default=600.0, help="cap on the MLP NeRF's optimisation seconds")
    ap.add_argument("--lpips-weights", default="../shared/weights", help="LPIPS-alex weights file or folder")
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    train = load_blender(args.data, "train")
    test_all = load_blender(args.data, "test")
    split = get_protocol("lego-dense")(len(train))
    test = test_all.select(list(split.evaluation))
    probe = [0, 6, 12, 18, 24]

    print(f"protocol lego-dense: {len(split.inputs)} input views, {len(test)} test views, 128x128, white")
    cfg = FitConfig(steps=args.steps, w_rgb_per_sample=0.1)
    grid_fit, grid_curve, grid_reached, grid_s = timed_fit(
        train, list(split.inputs), cfg, test, probe, (25.0, 28.0), args.budget, 15.0, "grid"
    )
    weights = args.lpips_weights if Path(args.lpips_weights).exists() else None
    result = evaluate_views(
        grid_fit.state.render, test.cameras, test.composite(1.0), train.cameras, None, out, None, lpips_weights=weights
    )
    print(f"grid field after {grid_s:.0f} s of optimisation ({grid_fit.step} steps): {format_metrics(result['means'])}")

    mlp_cfg = FitConfig(representation="mlp", steps=10**6, batch_rays=1024, w_rgb_per_sample=0.0)
    _, mlp_curve, mlp_reached, mlp_s = timed_fit(
        train, list(split.inputs), mlp_cfg, test, probe, (25.0,), args.mlp_budget, 60.0, "mlp"
    )
    t_grid25 = grid_reached.get(25.0)
    if 25.0 in mlp_reached:
        ratio, ratio_kind = mlp_reached[25.0] / t_grid25, "measured"
    else:
        ratio, ratio_kind = mlp_s / t_grid25, "lower bound (MLP did not reach 25 dB within its cap)"

    aabb = grid_fit.state.field.aabb.tolist()
    tp_grid = throughput(lambda: DenseGridField(aabb, resolution=128))
    tp_hash = throughput(lambda: HashGridField(aabb), n=65536, reps=3)
    tp_mlp = throughput(lambda: MLPField(aabb), n=16384, reps=2)
    record = {
        "protocol": "lego-dense",
        "method": "fit-grid",
        "scene": str(args.data),
        "input_views": list(split.inputs),
        "evaluation_views": list(split.evaluation),
        "background": [1.0, 1.0, 1.0],
        "means": result["means"],
        "binned": result["binned"],
        "per_view": result["per_view"],
        "grid": {"train_seconds": grid_s, "steps": grid_fit.step, "curve": grid_curve, "time_to": grid_reached},
        "mlp": {"train_seconds": mlp_s, "curve": mlp_curve, "time_to": mlp_reached},
        "speed_ratio_to_25db": ratio,
        "speed_ratio_kind": ratio_kind,
        "throughput_samples_per_s": {"grid_128": tp_grid, "hashgrid_16x2": tp_hash, "mlp_8x256": tp_mlp},
        "wall_seconds": time.perf_counter() - t_start,
        "peak_memory_mb": peak_memory_mb(),
        "device": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "env": environment_info(),
        "command": " ".join([sys.executable, *sys.argv]),
    }
    (out / "dense_lego.json").write_text(json.dumps(nan_to_none(record), indent=1))
    print(
        f"lego-dense grid: PSNR {result['means']['psnr']:.2f} SSIM {result['means']['ssim']:.3f} after {grid_s:.0f} s; "
        f"time to 25 dB {t_grid25 or float('nan'):.0f} s, to 28 dB {grid_reached.get(28.0, float('nan')):.0f} s; "
        f"MLP to 25 dB: {mlp_reached.get(25.0, 'not reached')} (cap {args.mlp_budget:.0f} s); "
        f"ratio {ratio:.1f}x ({ratio_kind}); throughput (samples/s) grid {tp_grid / 1e3:.0f}k, "
        f"hash {tp_hash / 1e3:.0f}k, MLP {tp_mlp / 1e3:.0f}k; "
        f"peak {record['peak_memory_mb']:.0f} MB"
    )
    print(f"wrote {out / 'dense_lego.json'}; reproduce: python benchmarks/dense_lego.py --data {args.data}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
