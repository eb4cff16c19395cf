"""Benchmark the household objects: build time of the default mixed recipe, a contact sheet per
category, and multi-view consistency (a per-scene field fitted to 28 views of household test objects,
evaluated on their 4 held-out views; goal >= 28 dB mean).

    python benchmarks/household.py --data data/fewview-objects-mixed --out bench-out/household

``--data`` is built with the default recipe (`fewview data objects --out DATA`) when it does not
exist; an existing folder reports the build time its card recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from fewview.evaluation import evaluate_views
from fewview.methods.fit import Fitter
from fewview.methods.fit_config import FitConfig
from fewview.metrics import format_metrics
from fewview.objects.builder import ObjectsConfig, build, load_object


def category_sheets(root: Path, card: dict, out: Path, n_objects: int, n_views: int) -> Path:
    """One objects x views sheet per household category (test objects first, then others) and a combined,
    labelled figure of all categories."""
    household = card["household"]["models"]
    kept = {i for v in card["splits"].values() for i in v}
    blocks = []
    for cat in sorted({m["category"] for m in household.values()}):
        ids = [int(i) for i, m in household.items() if m["category"] == cat and int(i) in kept]
        test = [i for i in ids if i in set(card["splits"]["test"])]
        pick = (test + [i for i in ids if i not in test])[:n_objects]
        rows = []
        for i in pick:
            s = load_object(root, i)
            idx = np.linspace(0, len(s) - 1, n_views).round().astype(int)
            rows.append(torch.cat(list(s.composite(1.0)[idx]), dim=2))
        sheet = Image.fromarray(torch.cat(rows, 1).permute(1, 2, 0).mul(255).round().byte().numpy())
        sheet.save(out / f"household_{cat.replace(' ', '_').lower()}.png")
        label = Image.new("RGB", (sheet.width, 14), "white")
        ImageDraw.Draw(label).text((2, 1), f"{cat} ({len(ids)} models)", fill="black")
        blocks += [label, sheet]
    fig = Image.new("RGB", (max(b.width for b in blocks), sum(b.height for b in blocks)), "white")
    y = 0
    for b in blocks:
        fig.paste(b, (0, y))
        y += b.height
    fig.save(out / "household_categories.png", optimize=True)
    return out / "household_categories.png"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/fewview-objects-mixed", help="mixed recipe at 64x64 (built if missing)")
    ap.add_argument("--household", default="", help="folder of .sh3f libraries for the build (default: search)")
    ap.add_argument("--out", default="bench-out/household")
    ap.add_argument("--fit-objects", type=int, default=6, help="household test objects fitted from 28 views")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lpips-weights", default=None, help="LPIPS-alex weights (default: discovery)")
    args = ap.parse_args()
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"command": " ".join([sys.executable, *sys.argv]), "threads": torch.get_num_threads()}
    if not (data / "card.json").is_file():
        t = time.perf_counter()
        build(ObjectsConfig(objects=2112, recipe="mixed", household=args.household), data)
        record["build_seconds_measured_here"] = time.perf_counter() - t
    card = json.loads((data / "card.json").read_text())
    n = sum(len(v) for v in card["splits"].values())
    record["build"] = {"seconds": card["seconds"], "command": card["command"], "objects": n,
                       "skipped": len(card["household"]["skipped"]), "views": card["config"]["views"],
                       "res": card["config"]["res"]}  # fmt: skip
    cfg = card["config"]
    print(f"build: {n} objects x {cfg['views']} views at {cfg['res']}px in {card['seconds'] / 60:.1f} min "
          f"({card['command']}); {record['build']['skipped']} models skipped")  # fmt: skip
    sheet = category_sheets(data, card, out, 4, 8)
    print(f"contact sheets: {out}/household_*.png, all categories in {sheet}")
    household = set(card["household"]["models"])
    test = [i for i in card["splits"]["test"] if str(i) in household][: args.fit_objects]
    held_out = [0, 8, 16, 24]
    fits = []
    for oi in test:
        scene = load_object(data, oi)
        inputs = [i for i in range(len(scene)) if i not in held_out]
        cfg = FitConfig(steps=args.steps, grid_res=48, grid_res_final=96, upsample_step=500, w_rgb_per_sample=0.1)
        t = time.perf_counter()
        fit = Fitter(scene, inputs, cfg)
        fit.run(progress=False)
        ev = scene.select(held_out)
        res = evaluate_views(fit.state.render, ev.cameras, ev.composite(1.0), fit.train.cameras,
                             lpips_weights=args.lpips_weights)  # fmt: skip
        name = card["household"]["models"][str(oi)]["name"]
        fits.append({"object": oi, "name": name, "category": scene.meta["category"], **res["means"],
                     "seconds": time.perf_counter() - t})  # fmt: skip
        print(f"object {oi} ({name}, {scene.meta['category']}), 28 views -> 4 held out: "
              f"{format_metrics(res['means'])}", flush=True)  # fmt: skip
    mean = float(np.mean([f["psnr"] for f in fits]))
    record["fit_28_views"] = {"objects": fits, "mean_psnr": mean, "goal": 28.0, "steps": args.steps}
    print(f"mean held-out PSNR over {len(fits)} household test objects: {mean:.2f} dB (goal >= 28)")
    (out / "household.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / 'household.json'}; reproduce: python benchmarks/household.py --data {args.data} "
          f"--out {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
