"""Benchmark the diffusion core on held-out fewview-objects (test split).

1. VAE reconstruction: PSNR/SSIM of decode(encode(x)) over every 4th view of the first ``--vae-objects``
   test objects (goal: >= 30 dB at 64²). With ``--objects128`` (the 128² set ``--vae128`` was fine-tuned on), the
   64² weights and the 128² variant on the first ``--vae128-objects`` test objects of the ``--objects`` recipe
   rendered at 128², leaving out the training objects of the 128² set: held out of both.
2. Inpainting: for each of the first ``--inpaint-objects`` test objects, a query view and a context view
   chosen by a permutation seeded with the object index, and two masks on the query:
   - ``half``: one half of the image (side = object index mod 4);
   - ``warp``: IPSM's mask, the query pixels the context view does not see through the depth maps
     (the query's background counts as unknown, as in a pseudo view);
   - ``warp-object``: the same restricted to the object (its background known), the fairer test of
     the baselines, which otherwise paint the background in the object's colours.
   PSNR/SSIM of the filled region (masked metrics on GT-composited results) for the inpainting model
   (DDIM, 50 steps, η 0, one sample; and the mean of ``--samples`` samples), and two baselines:
   the mean colour of the known pixels, and a blurred fill (normalised convolution from the known pixels
   at the smallest Gaussian scale that reaches each unknown pixel).
   Contact sheets of the first 8 objects per mask kind: ``OUT/inpaint_KIND.png`` (truth | input | mean colour |
   blurred | 1 sample | mean of samples).
3. Sampling time for one image with 50 DDIM steps (median of 3), and the UNet's per-step time.

    python benchmarks/diffusion.py --objects data/fewview-objects
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewview.checkpoint import environment_info
from fewview.diffusion.masks import blurred_fill, halves, inverse_warp, mean_fill, nearest_fill, white_fill
from fewview.evaluation import to_uint8
from fewview.metrics.image import psnr, ssim
from fewview.objects.builder import held_out_views, recipe, splits
from fewview.pretrained import resolve_model_dir
from fewview.train import ObjectsSource, from_pretrained


def region_metrics(filled: torch.Tensor, gt: torch.Tensor, unknown: torch.Tensor) -> dict:
    comp = gt * (1 - unknown) + filled * unknown
    return {"psnr": psnr(comp, gt, unknown).tolist(), "ssim": ssim(comp, gt, unknown).tolist()}


def stored_views(root: str, n: int):
    """Every 4th view (on white) of the first ``n`` test objects of a fewview-objects folder."""
    src = ObjectsSource(root, "test", n)
    for s in range(len(src)):
        img, msk, _ = src.views(s, list(range(0, src.num_views(s), 4)))
        yield img * msk + (1 - msk)


def vae_eval(vae, views, name: str, data: str) -> dict:
    """PSNR/SSIM of decode(encode(x)) over the image batches ``views`` (one per object)."""
    ps, ss, objects = [], [], 0
    with torch.no_grad():
        for x in views:
            rec = vae.reconstruct(x)
            ps += psnr(rec, x).tolist()
            ss += ssim(rec, x).tolist()
            objects, res = objects + 1, x.shape[-1]
    v = {"model": str(name), "data": data, "objects": objects, "images": len(ps), "psnr": float(np.mean(ps)),
         "ssim": float(np.mean(ss)), "psnr_p10": float(np.percentile(ps, 10)),
         "scale_factor": float(vae.scale_factor), "resolution": res}  # fmt: skip
    print(
        f"VAE {name} at {res}²: PSNR {v['psnr']:.2f} dB (10th percentile {v['psnr_p10']:.2f}), SSIM "
        f"{v['ssim']:.4f} on {v['images']} held-out views; latent scale {v['scale_factor']:.4f}",
        flush=True,
    )
    return v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", default="data/fewview-objects", help="fewview-objects folder (test split)")
    ap.add_argument("--objects128", help="the 128² set --vae128 trained on: compare both VAEs at its resolution")
    ap.add_argument("--vae", default="vae64", help="pretrained VAE folder or shipped name")
    ap.add_argument("--vae128", default="vae128", help="the 128² VAE (pretrained folder or shipped name)")
    ap.add_argument("--inpaint", default="inpaint64", help="pretrained inpainting model folder or shipped name")
    ap.add_argument("--vae-objects", type=int, default=100)
    ap.add_argument("--vae128-objects", type=int, default=40)
    ap.add_argument("--inpaint-objects", type=int, default=50)
    ap.add_argument("--inpaint-group", default="all", help="test objects for inpainting: all | household | parametric")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--samples", type=int, default=4, help="samples averaged for the 'mean of samples' row")
    ap.add_argument("--out", default="bench-out/diffusion")
    args = ap.parse_args()
    t_start = time.perf_counter()
    record: dict = {"objects": str(args.objects), "threads": torch.get_num_threads()}

    # 1. VAE reconstruction; on 128² renders, the 64² weights and the 128² variant fine-tuned from them
    vae = from_pretrained(resolve_model_dir(args.vae))
    record["vae"] = vae_eval(vae, stored_views(args.objects, args.vae_objects), args.vae, args.objects)
    if args.objects128:
        # held out of both: test objects of the --objects recipe, rendered at 128², that --objects128 did not train on
        cfg = replace(recipe(args.objects), res=recipe(args.objects128).res)
        train128 = splits(recipe(args.objects128))["train"]
        views = [x for _, x, _, _ in held_out_views(cfg, args.vae128_objects, train128, every=4)]
        data = f"{args.objects} test objects re-rendered at {cfg.res}², minus {args.objects128}'s training objects"
        record["vae_128"] = vae_eval(vae, views, args.vae, data)
        record["vae128"] = vae_eval(from_pretrained(resolve_model_dir(args.vae128)), views, args.vae128, data)

    # 2. Inpainting
    model = from_pretrained(resolve_model_dir(args.inpaint))
    src = ObjectsSource(args.objects, "test", args.inpaint_objects, depth=True, group=args.inpaint_group)
    kinds = ("warp-object", "half", "warp")  # headline first: object pixels only (the background is white)
    imgs, unknown = {k: [] for k in kinds}, {k: [] for k in kinds}
    for s in range(len(src)):
        oi = src.ids[s]
        q, c = torch.randperm(src.num_views(s), generator=torch.Generator().manual_seed(oi))[:2].tolist()
        img, msk, cams = src.views(s, [q, c])
        x = img * msk + (1 - msk)
        d = src.depths(s, [q, c])
        c2w, K = cams.c2w.float(), cams.K.float()
        _, valid = inverse_warp(d[:1], c2w[:1], K[:1], x[1:], d[1:], c2w[1:], K[1:])
        half = halves(*x.shape[-2:])[oi % 4 : oi % 4 + 1]
        warp = (~valid).float()
        for kind, m in (("half", half), ("warp", warp), ("warp-object", warp * (d[:1] > 0).float())):
            imgs[kind].append(x[:1])
            unknown[kind].append(m)
    rows = {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        gt, m = torch.cat(imgs[kind]), torch.cat(unknown[kind])
        samples = [model.inpaint(gt, m, steps=args.steps, generator=torch.Generator().manual_seed(k))
                   for k in range(args.samples)]  # fmt: skip
        fills = {"white fill": white_fill(gt, m), "mean colour": mean_fill(gt, m), "blurred fill": blurred_fill(gt, m),
                 "nearest known pixel": nearest_fill(gt, m), "inpaint (1 sample)": samples[0],
                 f"inpaint (mean of {args.samples})": torch.stack(samples).mean(0)}  # fmt: skip
        rows[kind] = {}
        for name, f in fills.items():
            r = region_metrics(f, gt, m)
            rows[kind][name] = {"psnr": float(np.mean(r["psnr"])), "ssim": float(np.mean(r["ssim"])), "per_image": r}
        rows[kind]["unknown_fraction"] = float(m.mean())
        base = [n for n in fills if not n.startswith("inpaint")]
        rows[kind]["strongest_baseline"] = max(base, key=lambda n: rows[kind][n]["psnr"])
        # contact sheet, one object per row: truth | input (unknown grey) | each fill composited on the known pixels
        cols = [gt, gt * (1 - m) + 0.5 * m, *(gt * (1 - m) + f * m for f in fills.values())]
        sheet = torch.cat([torch.cat([c[i] for c in cols], -1) for i in range(min(8, len(gt)))], -2)
        Image.fromarray(to_uint8(sheet)).save(out / f"inpaint_{kind}.png")
        for name, r in rows[kind].items():
            if isinstance(r, dict):
                print(f"inpaint {kind:11s} mask  {name:20s} PSNR {r['psnr']:.2f}  SSIM {r['ssim']:.4f}", flush=True)
        print(f"inpaint {kind:11s} mask  strongest baseline: {rows[kind]['strongest_baseline']}", flush=True)
    record["inpaint"] = {"model": str(args.inpaint), "objects": len(src), "group": args.inpaint_group,
                         "steps": args.steps, "masks": rows}  # fmt: skip

    # 3. Sampling time
    x, m = torch.cat(imgs["half"])[:1], torch.cat(unknown["half"])[:1]
    times = []
    for _ in range(3):
        t = time.perf_counter()
        model.inpaint(x, m, steps=50, generator=torch.Generator().manual_seed(0))
        times.append(time.perf_counter() - t)
    z = torch.randn(1, model.config.latent_channels, model.config.latent_size, model.config.latent_size)
    cond = {"concat": torch.randn(1, model.concat_channels, *z.shape[-2:])}
    with torch.no_grad():
        model.denoise(z, 500, **cond)
        t = time.perf_counter()
        for _ in range(20):
            model.denoise(z, 500, **cond)
        step = (time.perf_counter() - t) / 20
    record["timing"] = {"ddim50_seconds_per_image": statistics.median(times), "unet_step_seconds": step,
                        "unet_parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    print(f"sampling: {statistics.median(times):.2f} s per image for 50 DDIM steps (UNet step {step * 1e3:.1f} ms, "
          f"{torch.get_num_threads()} threads)", flush=True)  # fmt: skip
    record.update(wall_seconds=time.perf_counter() - t_start, env=environment_info(),
                  command=" ".join(["python", *sys.argv]))  # fmt: skip
    (out / "diffusion.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / 'diffusion.json'}; reproduce: {record['command']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
