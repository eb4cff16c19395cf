"""How well the VLDM recovers a held-out view from each noise level: the multi-step denoise (SparseFusion's
distillation target) of the true view's latent from continuous t, and DDIM samples from pure noise.

    python benchmarks/vldm_noise.py --n-objects 5

PSNR against the true view (objects-2view inputs as the context; every 8th evaluation view, at most 3 per object).
The VAE's own round trip is the ceiling. Also the RMS error of the ε the model implies at high noise, beside that of
the trivial estimate x_t / √(1 − ᾱ) (exact as ᾱ → 0): where the model's is larger, its x̂0 there is worse than none.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fewview.data import get_protocol
from fewview.metrics import psnr
from fewview.objects.builder import load_object
from fewview.pretrained import from_pretrained, resolve_model_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", default="data/fewview-objects-mixed")
    ap.add_argument("--model", default="vldm")
    ap.add_argument("--n-objects", type=int, default=5)
    ap.add_argument("--t", type=float, nargs="+", default=[0.3, 0.6, 0.8, 0.9, 0.95, 0.99])
    ap.add_argument("--max-denoise-steps", type=int, default=20)
    ap.add_argument("--sample-steps", type=int, nargs="+", default=[20, 50])
    ap.add_argument(
        "--clip-x0",
        type=float,
        nargs="*",
        default=[10.0, 3.0],
        help="also DDIM samples (first --sample-steps) with x̂0 clipped to ±these (the official code: 10)",
    )
    ap.add_argument("--eps-t", type=float, nargs="*", default=[0.6, 0.8, 0.9, 0.95, 0.98, 0.99],
                    help="continuous times of the ε error (4 noise draws per view)")
    ap.add_argument("--out", default="bench-out/vldm_noise.json")
    args = ap.parse_args()
    model = from_pretrained(resolve_model_dir(args.model)).eval()
    card = json.loads((Path(args.objects) / "card.json").read_text())
    scores: dict[str, list[float]] = {}
    errors: dict[str, list[float]] = {}  # squared ε errors, per view
    for oi in card["splits"]["test"][: args.n_objects]:
        scene = load_object(args.objects, oi)
        split = get_protocol("objects-2view")(oi, len(scene))
        inp = scene.select(list(split.inputs))
        ctx = inp.composite(1.0).float()
        for i in list(split.evaluation)[::8][:3]:
            ev = scene.select([i])
            gt = ev.composite(1.0).float()
            cond, _ = model.condition(ctx, inp.cameras, ev.cameras)
            with torch.no_grad():
                z0 = model.vae.encode(gt)
                scores.setdefault("vae round trip", []).append(float(psnr(model.vae.decode(z0).clamp(0, 1), gt)))
                for t in args.t:
                    g = torch.Generator().manual_seed(0)
                    z, _ = model.multistep_denoise(z0, t, cond, generator=g, max_steps=args.max_denoise_steps)
                    x = model.vae.decode(z).clamp(0, 1)
                    scores.setdefault(f"denoise from t = {t}", []).append(float(psnr(x, gt)))
            runs = [(steps, None) for steps in args.sample_steps] + [(args.sample_steps[0], c) for c in args.clip_x0]
            for steps, clip in runs:
                g = torch.Generator().manual_seed(0)
                x = model.sample(ctx, inp.cameras, ev.cameras, 1, steps, 1.0, g, clip_x0=clip)
                key = f"DDIM sample, {steps} steps" if clip is None else f"DDIM, {steps} steps, x0 clip {clip:g}"
                scores.setdefault(key, []).append(float(psnr(x, gt)))
            g = torch.Generator().manual_seed(0)
            sch = model.schedule
            for t in args.eps_t:
                ti = sch.continuous_to_index(t)
                tt = torch.full((4,), ti)
                z = z0.expand(4, -1, -1, -1)
                n = torch.randn(z.shape, generator=g)
                x_t = sch.add_noise(z, n, tt)
                with torch.no_grad():
                    out = model.denoise(x_t, tt, concat=cond["concat"].expand(4, -1, -1, -1))
                eps = sch.eps_x0(out, x_t, ti)[0]
                trivial = x_t / (1 - sch.alpha_bar(ti, x_t)).sqrt()
                errors.setdefault(f"model at t = {t}", []).append(float(((eps - n) ** 2).mean()))
                errors.setdefault(f"x_t/√(1−ᾱ) at t = {t}", []).append(float(((trivial - n) ** 2).mean()))
            white = torch.ones_like(gt)
            scores.setdefault("white image", []).append(float(psnr(white, gt)))
    means = {k: sum(v) / len(v) for k, v in scores.items()}
    for k, v in means.items():
        print(f"{k:28s} {v:6.2f} dB  ({len(scores[k])} views)")
    rms = {k: (sum(v) / len(v)) ** 0.5 for k, v in errors.items()}
    for k, v in rms.items():
        print(f"ε RMS error, {k:24s} {v:.4f}")
    record = {"command": " ".join(["python", *sys.argv]), "psnr": means, "eps_rms_error": rms,
              "views": len(scores["white image"])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}; reproduce: {record['command']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
