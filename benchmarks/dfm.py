"""Benchmark `dfm`: DFM from one view against pixelNeRF (the paper's Table 1 analog), with diversity and uncertainty.

Rows: pixelNeRF (the shipped one, deterministic), DFM one sample (scene 0) and DFM mean of N samples (the per-pixel
mean of N sampled scenes' renders); SparseFusion from one view is not run (its VLDM needs 2-5 context views).
Protocols: objects-1view (held-out test objects of the mixed fewview-objects set) and, from one view, lego-3view's
first input and llff-3view's first input (mary_rose), evaluated on those protocols' views. Figures per row: PSNR /
SSIM / LPIPS-alex; FD-AlexNet (Fréchet distance of AlexNet features, fewview.metrics.frechet: not FID, whose
Inception weights cannot be had here) between all rendered and all real evaluation views; per-sample wall time.

Diversity: the per-pixel standard deviation across the N samples, inside the object's pixels that the input view
saw (evaluation pixels whose ground-truth surface point reprojects onto the input's visible surface, within 3 % of
its depth) and those it did not. Uncertainty: Pearson correlation, per object, between that variance and the squared
error of the mean render over the object's pixels.

    python benchmarks/dfm.py --n-objects 20 --samples 4
    python benchmarks/dfm.py --protocols objects-1view --n-objects 2 --samples 2 --sample-steps 10   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fewview.data import get_protocol
from fewview.diffusion.masks import _nearest, reproject
from fewview.evaluation import evaluate_views, mean_metrics
from fewview.methods.dfm import DFMOptions, DFMReconstruction
from fewview.methods.protocol_run import evaluation_targets, protocol_scenes
from fewview.methods.recon import ModelRenderer, model_image_size
from fewview.metrics.frechet import fd_alexnet
from fewview.objects.builder import load_object
from fewview.pretrained import from_pretrained, resolve_model_dir

ROWS = ["pixelnerf", "dfm-sample", "dfm-mean"]


def seen_masks(ev, inp) -> torch.Tensor:
    """(N, 1, H, W): evaluation pixels on the object whose surface point the input view (one) saw."""
    d_in = inp.depths[:1].float()
    out = []
    for i in range(len(ev)):
        d = ev.depths[i : i + 1].float()
        uv, z, ok = reproject(d, ev.cameras.c2w[i : i + 1], ev.cameras.K[i : i + 1], inp.cameras.c2w[:1],
                              inp.cameras.K[:1])  # fmt: skip
        src, inside = _nearest(d_in.double(), uv, ok)
        seen = ok & inside & (src[:, 0] > 0) & ((src[:, 0] - z).abs() < 0.03 * z)
        out.append(seen[:, None].float())
    return torch.cat(out)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def score_scene(scene_in, inputs, ev_scene, ev_ids, args, models, weights) -> dict:
    inp = scene_in.select(inputs)
    ev = ev_scene.select(ev_ids)
    gt, masks = evaluation_targets(ev_scene, ev_ids, (1.0, 1.0, 1.0))
    res: dict = {}
    pn, pn_size = models["pixelnerf"]
    ctx = inp.composite((1.0, 1.0, 1.0)) if inp.masks is not None else inp.images
    t = time.perf_counter()
    model_render, seen_renders = ModelRenderer(pn, ctx, inp.cameras, pn_size), []

    def render(cam):
        out = model_render(cam)
        seen_renders.append(out["rgb"])
        return out

    r = evaluate_views(render, ev.cameras, gt, inp.cameras, masks, lpips_weights=weights)
    res["pixelnerf"] = {"means": r["means"], "seconds": time.perf_counter() - t, "renders": torch.stack(seen_renders)}
    t = time.perf_counter()
    opts = DFMOptions(dfm_model=args.model, dfm_samples=args.samples, dfm_seed=0, dfm_steps=args.sample_steps)
    rec = DFMReconstruction(scene_in, inputs, opts, model=models["dfm"]).run()
    sample_seconds = (time.perf_counter() - t) / args.samples
    outs = [[s.render(ev.cameras[i : i + 1]) for i in range(len(ev))] for s in rec.scenes]
    stack = torch.stack([torch.stack([o["rgb"] for o in per]) for per in outs])  # (S, N, 3, H, W)
    for row, imgs in (("dfm-sample", stack[0]), ("dfm-mean", stack.mean(0))):
        lookup = {i: imgs[i] for i in range(len(ev))}
        cams = ev.cameras

        def fixed(cam, lookup=lookup, cams=cams):
            i = int(torch.argmin((cams.c2w - cam.c2w[:1]).flatten(1).abs().sum(1)))
            return {"rgb": lookup[i], "depth": torch.zeros(1, *lookup[i].shape[-2:]),
                    "opacity": torch.ones(1, *lookup[i].shape[-2:])}  # fmt: skip

        r = evaluate_views(fixed, ev.cameras, gt, inp.cameras, masks, lpips_weights=weights)
        seconds = sample_seconds if row == "dfm-sample" else sample_seconds * args.samples
        res[row] = {"means": r["means"], "seconds": seconds, "renders": imgs}
    var = stack.var(0, unbiased=True).mean(1, keepdim=True) if args.samples > 1 else torch.zeros_like(stack[0, :, :1])
    err = ((stack.mean(0) - gt) ** 2).mean(1, keepdim=True)
    # the object's pixels: the evaluation views' masks (alpha for objects and Blender scenes), else every pixel
    fg = (ev.masks > 0.5) if ev.masks is not None else torch.ones_like(err, dtype=torch.bool)
    extra = {"uncertainty_error_pearson": pearson(var[fg], err[fg]) if args.samples > 1 else float("nan")}
    if getattr(ev, "depths", None) is not None and getattr(inp, "depths", None) is not None:
        seen = seen_masks(ev, inp).bool() & fg
        sd = var.sqrt()
        unseen = fg & ~seen
        extra["std_seen"] = float(sd[seen].mean()) if seen.any() else float("nan")
        extra["std_unseen"] = float(sd[unseen].mean()) if unseen.any() else float("nan")
    res["extra"] = extra
    res["gt"] = gt
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", default="data/fewview-objects-mixed")
    ap.add_argument("--lego", default="../shared/data/lego")
    ap.add_argument("--llff", default="../shared/data/mary_rose")
    ap.add_argument("--n-objects", type=int, default=20)
    ap.add_argument("--protocols", nargs="+", default=["objects-1view", "lego-3view", "llff-3view"])
    ap.add_argument("--model", default="dfm", help="DFM (shipped name or folder)")
    ap.add_argument("--pixelnerf", default="pixelnerf", help="pixelNeRF (shipped name or folder)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--out", default="bench-out/dfm")
    ap.add_argument("--lpips-weights", default="../shared/weights")
    args = ap.parse_args()
    weights = args.lpips_weights if Path(args.lpips_weights).exists() else None
    folder = resolve_model_dir(args.model)
    dfm = from_pretrained(folder).eval()
    dfm.image_size = model_image_size(folder)
    pn_dir = resolve_model_dir(args.pixelnerf)
    models = {"dfm": dfm, "pixelnerf": (from_pretrained(pn_dir).eval(), model_image_size(pn_dir))}
    record: dict = {"command": " ".join(["python", *sys.argv]), "samples": args.samples,
                    "sample_steps": args.sample_steps, "results": {}}  # fmt: skip
    out = Path(args.out)
    torch.manual_seed(0)
    for protocol in args.protocols:
        scenes = []
        if protocol == "objects-1view":
            if not Path(args.objects).exists():
                print(f"skipping {protocol}: {args.objects} not found", flush=True)
                continue
            card = json.loads((Path(args.objects) / "card.json").read_text())
            for oi in card["splits"]["test"][: args.n_objects]:
                sc = load_object(args.objects, oi)
                split = get_protocol(protocol)(oi, len(sc))
                scenes.append((sc, list(split.inputs), sc, list(split.evaluation)))
            name = protocol
        else:
            path = args.lego if protocol.startswith("lego") else args.llff
            if not Path(path).exists():
                print(f"skipping {protocol}: {path} not found", flush=True)
                continue
            scene_in, ev_scene, split = protocol_scenes(path, protocol)
            scenes.append((scene_in, list(split.inputs)[:1], ev_scene, list(split.evaluation)))
            name = f"{protocol}, first input only"
        per = []
        for k, s in enumerate(scenes):
            t0 = time.perf_counter()
            per.append(score_scene(*s, args, models, weights))
            print(f"  {name}: scene {k + 1}/{len(scenes)} in {time.perf_counter() - t0:.0f} s", flush=True)
        summary = {}
        for row in ROWS:
            means = mean_metrics([p[row] for p in per])
            fake = torch.cat([p[row]["renders"] for p in per])
            real = torch.cat([p["gt"] for p in per])
            means["fd_alexnet"] = fd_alexnet(fake, real, weights) if len(real) > 1 else float("nan")
            summary[row] = {"means": means, "seconds": float(np.mean([p[row]["seconds"] for p in per]))}
            m = means
            print(f"{name:32s} {row:11s} PSNR {m['psnr']:.2f}  SSIM {m['ssim']:.3f}  LPIPS "
                  f"{m.get('lpips_alex', float('nan')):.3f}  FD-AlexNet {m['fd_alexnet']:.1f}  "
                  f"({summary[row]['seconds']:.1f} s per scene)", flush=True)  # fmt: skip
        extra = {k: float(np.nanmean([p["extra"].get(k, float("nan")) for p in per])) for k in per[0]["extra"]}
        summary["diversity_uncertainty"] = extra
        print(f"{name:32s} " + "  ".join(f"{k} {v:.4f}" for k, v in extra.items()), flush=True)
        record["results"][name] = {"scenes": len(per), **summary}
        out.mkdir(parents=True, exist_ok=True)
        (out / "dfm.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / 'dfm.json'}; reproduce: {record['command']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
