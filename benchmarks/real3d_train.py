"""Train the LRM rows of Real3D's Table 5 analog (`benchmarks/real3d.py` scores them).

The A-only LRM trains from scratch on set A (the parametric objects, every view). Every other row starts from its
weights and trains ``--steps-self`` more steps, adding one thing at a time, as the paper's ablation:

| row | adds |
|---|---|
| `a-continued` | nothing: set A only for the same number of steps (the control for the extra training) |
| `input` | self-training on set B's single views: the input-view loss |
| `semantic-naive` | + the semantic loss averaged over the novel views |
| `semantic-max` | + the semantic loss on the least similar view instead |
| `cycle-e2e` | + cycle consistency, gradient through the first pass, full pose range from the start |
| `cycle-sg` | the cycle's first pass under stop-gradient |
| `curriculum` | + the pose curriculum (Real3D without curation: set B's clean single views), view encoder |
| `pool` | Real3D on set B cut out of cluttered images, uncurated |
| `pool-curated` | Real3D on the same pool after the occlusion-based curation (depth from `depth64`) |
| `curriculum-alexnet` | `curriculum` with the semantic loss on the ImageNet AlexNet trunk (shipped: `real3d`) |

Each row is `fewview train lrm` into ``OUT/ROW`` (resumable: an interrupted row continues where its checkpoint
left it); wall times accumulate in ``OUT/times.json``. Rows already trained to their step count are skipped.

    python benchmarks/real3d_train.py --data data/fewview-objects-mixed --out runs/real3d
    python benchmarks/real3d_train.py --rows lrm-a a-continued input   # a subset
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

NO_CYCLE = ["--model-w-cycle-rgb", "0", "--model-w-cycle-lpips", "0", "--model-w-cycle-mask", "0"]
# The ablation rows measure each loss with the view encoder in the semantic loss; `curriculum-alexnet` swaps in the
# AlexNet trunk (the LRM's default, shipped as `real3d` after that row).
SELF = ["--model-self-training", "--model-semantic-encoder", "viewenc"]
ROWS: dict[str, list[str]] = {
    "lrm-a": [],
    "a-continued": [],
    "input": SELF + NO_CYCLE + ["--model-w-semantic", "0"],
    "semantic-naive": SELF + NO_CYCLE + ["--model-semantic-reduce", "mean"],
    "semantic-max": SELF + NO_CYCLE,
    "cycle-e2e": SELF + ["--no-model-cycle-stop-grad", "--no-model-curriculum"],
    "cycle-sg": SELF + ["--no-model-curriculum"],
    "curriculum": SELF,
    "pool": SELF + ["--model-single-view-source", "pool"],
    "pool-curated": SELF + ["--model-single-view-source", "pool-curated"],
    "curriculum-alexnet": ["--model-self-training", "--model-semantic-encoder", "alexnet"],
}


def trained_steps(folder: Path) -> int:
    meta = folder / "checkpoint" / "meta.json"
    return json.loads(meta.read_text())["step"] if meta.is_file() else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/fewview-objects-mixed")
    ap.add_argument("--out", default="runs/real3d")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--steps-a", type=int, default=3000, help="steps of the A-only LRM from scratch")
    ap.add_argument("--steps-self", type=int, default=600, help="steps of every other row from the A-only weights")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("extra", nargs="*", help="more `fewview train lrm` options, after --")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times_path = out / "times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    base = out / "lrm-a" / "pretrained"
    for row in args.rows:
        steps = args.steps_a if row == "lrm-a" else args.steps_self
        folder = out / row
        if trained_steps(folder) >= steps and (folder / "pretrained" / "config.json").is_file():
            print(f"{row}: trained ({steps} steps), skipped", flush=True)
            continue
        cmd = ["fewview", "train", "lrm", "--data", args.data, "--out", str(folder), "--steps", str(steps),
               "--batch-size", str(args.batch_size), "--context-min", "1", "--context-max", "1", "--lr", str(args.lr),
               "--warmup", "100" if row == "lrm-a" else "20", "--eval-every", "0", "--checkpoint-every", "50",
               "--save-dtype", "float16", *ROWS[row], *args.extra]  # fmt: skip
        if row != "lrm-a":
            if not (base / "config.json").is_file():
                print(f"{row}: needs the A-only LRM ({base}); train row lrm-a first", file=sys.stderr)
                return 1
            cmd += ["--init", str(base)]
        print(f"{row}: {' '.join(cmd)}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call(cmd)
        times[row] = {"seconds": times.get(row, {}).get("seconds", 0.0) + time.perf_counter() - t, "steps": steps,
                      "command": " ".join(cmd)}  # fmt: skip
        times_path.write_text(json.dumps(times, indent=1))
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
