"""Benchmark fit speed beside a competing process: `fewview fit` of the shipped example object (300 steps,
the demo's sparse preset) on an idle machine and beside one busy loop (`yes > /dev/null`), with the thread
governor (default) and without it (FEWVIEW_ADAPT_THREADS=0). Goal: no worse than 2.5x slower with one core
taken.

    python benchmarks/threads_under_load.py --out bench-out/threads
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fewview.cli import EXAMPLE_OBJECT


def fit_seconds(env: dict, steps: int) -> tuple[float, list]:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "fewview", "fit", str(EXAMPLE_OBJECT), "--out", d, "--split", "train",
               "--views", "0,1,2", "--steps", str(steps), "--grid-res", "48", "--grid-res-final", "96",
               "--upsample-step", str(steps // 3), "--w-rgb-per-sample", "0.1", "--w-entropy", "0.001",
               "--w-silhouette", "1", "--w-tv", "0.01", "--checkpoint-every", str(10 * steps), "--quiet"]  # fmt: skip
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        el = time.perf_counter() - t
        hist = json.loads((Path(d) / "checkpoint" / "meta.json").read_text())["history"]
        return el, sorted({h.get("threads") for h in hist})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="bench-out/threads")
    args = ap.parse_args()
    rows = {}
    for governor in ("on", "off"):
        env = {**os.environ, "FEWVIEW_ADAPT_THREADS": "1" if governor == "on" else "0"}
        idle, th_idle = fit_seconds(env, args.steps)
        busy = subprocess.Popen("yes > /dev/null", shell=True, start_new_session=True)
        try:
            time.sleep(1.0)
            loaded, th_loaded = fit_seconds(env, args.steps)
        finally:
            os.killpg(busy.pid, 9)
            busy.wait()
        rows[governor] = {"idle_s": idle, "loaded_s": loaded, "slowdown": loaded / idle,
                          "threads_idle": th_idle, "threads_loaded": th_loaded}  # fmt: skip
        print(f"governor {governor}: idle {idle:.1f} s ({args.steps / idle:.1f} steps/s, threads {th_idle}), "
              f"beside a busy loop {loaded:.1f} s ({args.steps / loaded:.1f} steps/s, threads {th_loaded}): "
              f"{loaded / idle:.2f}x slower (goal <= 2.5x)", flush=True)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"steps": args.steps, "cores": os.cpu_count(), "rows": rows,
              "command": " ".join([sys.executable, *sys.argv])}  # fmt: skip
    (out / "threads_under_load.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / 'threads_under_load.json'}; reproduce: "
          f"python benchmarks/threads_under_load.py --out {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
