"""Benchmark DDP on CPU: the same training run (same global batch, same steps) as one process using
both cores and as two gloo processes under torchrun with one core each. Reports seconds per step and
the overhead of the two-process run, and checks that both end with the same weights.

    python benchmarks/ddp_overhead.py --data data/fewview-objects --model eft --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/fewview-objects")
    ap.add_argument("--model", default="eft", choices=["eft", "pixelnerf"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rays", type=int, default=128)
    ap.add_argument("--out", default="bench-out/ddp-overhead")
    args = ap.parse_args()
    out = Path(args.out)
    common = ["train", args.model, "--data", args.data, "--steps", str(args.steps), "--batch-size",
              str(args.batch_size), "--rays", str(args.rays), "--eval-every", "0", "--checkpoint-every",
              str(args.steps), "--device", "cpu", "--quiet", "--limit-scenes", "200"]  # fmt: skip
    runs = {
        "1 process x 2 threads": ([sys.executable, "-m", "fewview", *common, "--out", str(out / "one")], "2"),
        "2 processes x 1 thread (torchrun, gloo)": (
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(_port()), "-m", "fewview", *common, "--out", str(out / "two")], "1"),
    }  # fmt: skip
    seconds = {}
    for name, (cmd, threads) in runs.items():
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        seconds[name] = time.perf_counter() - t
        print(f"{name}: {seconds[name]:.1f} s for {args.steps} steps ({seconds[name] / args.steps:.2f} s/step, "
              "including start-up)", flush=True)  # fmt: skip
    a = load_file(out / "one" / "checkpoint" / "model.safetensors")
    b = load_file(out / "two" / "checkpoint" / "model.safetensors")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    names = list(seconds)
    overhead = seconds[names[1]] / seconds[names[0]] - 1
    print(f"DDP overhead on this CPU: {100 * overhead:+.0f}% wall time; max weight difference {diff:.2e}")
    rec = {"seconds": seconds, "steps": args.steps, "overhead": overhead, "max_weight_difference": diff,
           "model": args.model, "batch_size": args.batch_size, "rays": args.rays,
           "command": " ".join([sys.executable, *sys.argv])}  # fmt: skip
    (out / "ddp_overhead.json").write_text(json.dumps(rec, indent=1))
    print(f"wrote {out / 'ddp_overhead.json'}; reproduce: python {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
