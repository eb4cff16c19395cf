"""Trilinear lookups into a dense vertex grid: forward and backward milliseconds of the three paths fewview has, the
gather with its fused numba backward (the default on the CPU), the same gather with an ``index_add_`` backward, and
3-D ``F.grid_sample`` (the reference).

    python benchmarks/trilinear.py                       # 200k lookups into 128^3 x 12 and 96^3 x 12
    python benchmarks/trilinear.py --points 110000 --res 96 --channels 12 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fewview.fields.interp as interp
from fewview.fields.interp import trilinear, trilinear_reference


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (numba compiles or loads its cache here)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000


def lookup_ms(fn, table: torch.Tensor, res: int, u: torch.Tensor, w: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median milliseconds of ``fn(table, res, u)`` alone and with the backward of a weighted sum."""

    def fwd():
        with torch.no_grad():
            fn(table, res, u)

    def both():
        table.grad = None
        (fn(table, res, u) * w).sum().backward()

    return timed(fwd, repeats), timed(both, repeats)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--res", type=int, nargs="+", default=[128, 96])
    ap.add_argument("--channels", type=int, nargs="+", default=[12])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    fused_default = interp.scatter_weighted
    g = torch.Generator().manual_seed(0)
    print(f"{torch.get_num_threads()} threads, {args.points} points, median of {args.repeats}; milliseconds")
    print("| grid | path | forward | forward + backward |")
    print("|---|---|---|---|")
    for res in args.res:
        for c in args.channels:
            table = torch.randn(res**3, c, generator=g).requires_grad_()
            u = torch.rand(args.points, 3, generator=g) * 0.8 + 0.1
            w = torch.randn(args.points, c, generator=g)
            paths = {"gather, fused backward": (trilinear, True), "gather, index_add_ backward": (trilinear, False),
                     "grid_sample": (trilinear_reference, None)}  # fmt: skip
            for name, (fn, fused) in paths.items():
                interp.scatter_weighted = lambda *a, _f=fused: fused_default(*a, fused=_f)
                fwd, both = lookup_ms(fn, table, res, u, w, args.repeats)
                print(f"| {res}^3 x {c} | {name} | {fwd:.1f} | {both:.1f} |", flush=True)
    interp.scatter_weighted = fused_default
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
