"""SparseFusion's multi-step denoiser with the exact denoiser: how far each sampler lands from x0.

    python benchmarks/sampler_oracle.py

For a point mass at x0 the exact ε at any x_t is (x_t − √ᾱ x0)/√(1 − ᾱ), so an exact sampler returns x0 from any
noise level. The table gives the RMS distance to x0 (unit-variance latents, 16×16×4, 20 draws) of the denoise from
continuous t on the VLDM's cosine schedule in min(⌊100t⌋, cap) steps: fewview's deterministic PLMS, the official
stochastic PLMS (DDPM posterior steps on the Adams–Bashforth combination of ε, x̂0 clipped to ±10) and DDIM with
posterior steps (η = 1). Errors of the last kind come from the sampler, not the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fewview.diffusion import NoiseSchedule, multistep_denoise

SAMPLERS = {
    "PLMS, deterministic (fewview)": ("plms", 0.0, None),
    "PLMS, posterior steps, clip 10 (official)": ("plms", 1.0, 10.0),
    "DDIM, posterior steps (eta 1)": ("ddim", 1.0, None),
}


def exact_denoiser(schedule: NoiseSchedule, x0: torch.Tensor):
    def fn(x_t, t):
        a = schedule.alpha_bar(t, x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    return fn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--t", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--caps", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--out", default="bench-out/sampler_oracle.json")
    args = ap.parse_args()
    s = NoiseSchedule(beta_schedule="squaredcos_cap_v2")
    rows = {}
    for name, (method, eta, clip) in SAMPLERS.items():
        for cap in args.caps:
            errs = []
            for t in args.t:
                e = []
                for seed in range(args.draws):
                    g = torch.Generator().manual_seed(seed)
                    x0 = torch.randn(1, 4, 16, 16, generator=g, dtype=torch.float64)
                    out, _ = multistep_denoise(exact_denoiser(s, x0), x0, t, s, method=method, generator=g,
                                               clip_x0=clip, max_steps=cap, eta=eta)  # fmt: skip
                    e.append(float((out - x0).pow(2).mean().sqrt()))
                errs.append(sum(e) / len(e))
            rows[f"{name}, cap {cap}"] = errs
    head = "| sampler | " + " | ".join(f"t = {t:g}" for t in args.t) + " |"
    print(head)
    print("|" + "---|" * (len(args.t) + 1))
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
    record = {"command": " ".join(["python", *sys.argv]), "t": args.t, "rms_error": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}; reproduce: {record['command']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
