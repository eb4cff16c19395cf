"""Benchmark `sparsefusion`: the paper's Table 5 on the same models, binned by angle to the nearest input (Fig. 8).

Rows: no-prior field (the sparse preset), EFT alone (the VLDM's EFT), EFT + field, VLDM samples alone (DDIM,
classifier-free guidance), VLDM samples + field, SDS with the VLDM, SparseFusion. Protocols: objects-2view
(held-out test objects of the mixed fewview-objects set), lego-3view and mary_rose llff-3view. PSNR / SSIM /
LPIPS-alex per row; the fitted rows also report their wall time.

    python benchmarks/sparsefusion.py --objects data/fewview-objects-mixed --n-objects 20
    python benchmarks/sparsefusion.py --protocols objects-2view --n-objects 2 --rows eft sparsefusion   # a subset
    python benchmarks/sparsefusion.py --protocols objects-2view --split val --rows sparsefusion --t-max 0.9  # choose

Hyperparameters are chosen with ``--split val`` (validation objects), never on the test objects the table reports.

Every scene's figures are kept in ``OUT/scenes/PROTOCOL/ROW@SETTINGS/SCENE.json`` and reused by later runs with the same
``OUT`` (delete them to recompute), so a long table can be filled over several runs; the means cover the scenes
done so far, and the printed line says how many. The record (``--record``) keeps each scene's figures with the
settings folder that scored them, and a run whose ``OUT`` lacks a scene takes it from the record when the settings
match, so a fresh clone extends a committed table instead of refitting it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fewview.checkpoint import environment_info
from fewview.data import get_protocol
from fewview.evaluation import cached_figures, config_overrides, evaluate_views, mean_figures, settings_folder
from fewview.methods.fit_config import SPARSE_PRESET, FitConfig
from fewview.methods.protocol_run import evaluation_targets, protocol_scenes
from fewview.methods.runs import resolve_device
from fewview.methods.scene_fit import make_fitter
from fewview.methods.sparsefusion import SparseFusionConfig
from fewview.metrics import format_metrics
from fewview.objects.builder import load_object
from fewview.pretrained import from_pretrained, resolve_model_dir

FITTED = {"field": None, "eft+field": "eft", "vldm+field": "samples", "sds": "sds", "sparsefusion": "multistep"}
ROWS = ["field", "eft", "eft+field", "vldm", "vldm+field", "sds", "sparsefusion"]
T_MAX = SparseFusionConfig.__dataclass_fields__["sf_t_max"].default  # the method's default (the paper's 0.99)
DEFAULT_MODEL = SparseFusionConfig.__dataclass_fields__["sf_model"].default
CAP = SparseFusionConfig.__dataclass_fields__["sf_max_denoise_steps"].default  # the method's (the paper's: 50)


def model_renderer(vldm, row: str, inputs, guidance: float, steps: int, seed: int):
    """render(cam) of the rows that are a model's own output: the EFT's colour, or one VLDM sample."""
    size = int(vldm.config.latent_size * vldm.vae.downsample)
    ctx = F.interpolate(inputs.composite(1.0).float(), size=(size, size), mode="area")
    ctx_cams = inputs.cameras.resize(size, size)

    def render(cam):
        h, w = int(cam.size[0, 0]), int(cam.size[0, 1])
        small = cam.resize(size, size)
        if row == "eft":
            _, rgb = vldm.condition(ctx, ctx_cams, small)
        else:
            g = torch.Generator().manual_seed(seed)
            rgb = vldm.sample(ctx, ctx_cams, small, 1, steps, guidance, g)
        rgb = F.interpolate(rgb, size=(h, w), mode="bilinear", align_corners=False)[0].clamp(0, 1).cpu()
        return {"rgb": rgb, "depth": torch.zeros(1, h, w), "opacity": torch.ones(1, h, w)}

    return render


def config(row: str, args) -> FitConfig:
    if FITTED[row] is None:
        return FitConfig(**{**SPARSE_PRESET, "steps": args.steps, "upsample_step": args.steps // 3,
                            "device": args.device})  # fmt: skip
    options = dict(device=args.device, sf_model=args.model, sf_objective=FITTED[row], steps=args.steps,
                   upsample_step=args.steps // 3, sf_guidance=args.guidance,
                   sf_max_denoise_steps=args.max_denoise_steps, sf_t_max=args.t_max)  # fmt: skip
    return SparseFusionConfig(**{**options, **args.overrides})  # --set wins over the flags


def row_folder(row: str, args) -> str:
    """The cache folder of a row: its settings as they ran (``--set`` applied over the flags) and its config's hash."""
    if row not in FITTED:
        settings = {"sample_steps": args.sample_steps, "guidance": args.guidance}
        if args.model != DEFAULT_MODEL:
            settings["model"] = args.model
        return settings_folder(row, settings)
    cfg = config(row, args)
    settings = {"steps": cfg.steps, "max_denoise_steps": getattr(cfg, "sf_max_denoise_steps", args.max_denoise_steps),
                "guidance": getattr(cfg, "sf_guidance", args.guidance)}  # fmt: skip
    return settings_folder(row, settings, cfg)


def row_key(row: str, args) -> str:
    """The row's name in the record: its settings that differ from the defaults (t-max, --set, another VLDM)."""
    key = row if row != "sparsefusion" or args.t_max == T_MAX else f"{row}@t_max={args.t_max}"
    if row in FITTED and FITTED[row] is not None:
        key += "".join(f"@{k}={v}" for k, v in sorted(args.overrides.items()))
    if row != "field" and args.model != DEFAULT_MODEL:
        key += f"@model={args.model}"
    return key


def score(scene_in, inputs: list[int], ev_scene, ev_ids: list[int], row: str, args, vldm, weights) -> dict:
    t = time.perf_counter()
    inp = scene_in.select(inputs)
    timings = {}
    if row in ("eft", "vldm"):
        render = model_renderer(vldm, row, inp, args.guidance, args.sample_steps, 0)
    else:
        fitter = make_fitter(scene_in, inputs, config(row, args))
        render = fitter.run(progress=args.progress).render
        timings = dict(getattr(fitter, "timings", {}))
    gt, masks = evaluation_targets(ev_scene, ev_ids, (1.0, 1.0, 1.0))
    ev = ev_scene.select(ev_ids)
    res = evaluate_views(render, ev.cameras, gt, inp.cameras, masks, lpips_weights=weights)
    return {"means": res["means"], "binned": res["binned"], "seconds": time.perf_counter() - t, "timings": timings}


def time_split(scenes: list[dict]) -> dict[str, float]:
    """Mean seconds per scene of the fitter's phases: ``render`` is the novel view's render; ``backward`` is the
    steps' time outside the named phases (the input-view rays' render and losses, backward pass and update)."""
    split = {}
    for k in ("cache", "render", "encode", "denoise", "decode", "step"):
        vals = [s.get("timings", {}).get(k, 0.0) for s in scenes]
        split[k] = sum(vals) / len(vals)
    split["backward"] = split["step"] - split["render"] - split["encode"] - split["denoise"] - split["decode"]
    return split if split["step"] > 0 else {}


def from_record(path: Path, entry: dict, folder: str, scene: str) -> None:
    """Write the figures of ``scene`` kept in the record's ``entry`` to the cache file ``path`` when the file is
    missing and the entry was scored with the same settings ``folder``."""
    if path.is_file() or entry.get("folder") != folder:
        return
    for fig in entry.get("per_object", [entry]):
        if fig.get("scene") == scene:
            kept = {k: v for k, v in fig.items() if k not in ("scene", "folder", "command", "time_split", "scenes")}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(kept, indent=1))
            return


LABELS = {"field": "no prior (field, sparse preset)", "eft": "EFT alone", "eft+field": "EFT + field (mean-seeking)",
          "vldm": "VLDM samples alone", "vldm+field": "VLDM samples + field", "sds": "SDS with the VLDM",
          "sparsefusion": "SparseFusion"}  # fmt: skip


def row_label(key: str) -> str:
    """A record key as a table row: the row's name, then the settings it ran with beyond the defaults."""
    base, *rest = key.split("@")
    return LABELS.get(base, base) + (f" ({', '.join(rest)})" if rest else "")


def markdown(rows: dict) -> str:
    """One protocol's rows of a record as a Markdown table (the best PSNR, SSIM and LPIPS in bold), with the
    angle bins nearest to and farthest from the inputs as PSNR / LPIPS; each row with the default model first."""
    formats = {"psnr": ".2f", "ssim": ".3f", "lpips_alex": ".3f"}
    best = {k: (max if k != "lpips_alex" else min)((r["means"][k] for r in rows.values()
                                                    if r["means"].get(k) is not None), default=None)
            for k in formats}  # fmt: skip

    def cell(r: dict, k: str) -> str:
        if r["means"].get(k) is None:
            return ""  # scored without LPIPS weights (None, or absent in older records)
        text = format(r["means"][k], formats[k])
        return f"**{text}**" if r["means"][k] == best[k] else text

    lines = ["| row | PSNR | SSIM | LPIPS | 0-15° | 45°+ | seconds per scene | scenes |", "|---" * 8 + "|"]
    for key, r in sorted(rows.items(), key=lambda kv: (ROWS.index(kv[0].split("@")[0]), "@model=" in kv[0])):
        bins = [r.get("binned", {}).get(b) for b in ("0-15", "45+")]
        angle = [f"{b['psnr']:.2f}" + (f" / {b['lpips_alex']:.3f}" if "lpips_alex" in b else "") if b else ""
                 for b in bins]  # fmt: skip
        cells = [row_label(key), *(cell(r, k) for k in formats), *angle, f"{r['seconds']:.0f}", str(r["scenes"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", default="data/fewview-objects-mixed")
    ap.add_argument("--lego", default="../shared/data/lego")
    ap.add_argument("--llff", default="../shared/data/mary_rose")
    ap.add_argument("--n-objects", type=int, default=20)
    ap.add_argument("--protocols", nargs="+", default=["objects-2view", "lego-3view", "llff-3view"])
    ap.add_argument("--rows", nargs="+", default=ROWS)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="VLDM (shipped name or folder)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (the fits and the models)")
    ap.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance of the VLDM rows")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--max-denoise-steps", type=int, default=CAP,
                    help=f"SparseFusion's cap of PLMS steps (paper: 50; default: the method's, {CAP})")
    ap.add_argument("--t-max", type=float, default=T_MAX, help="SparseFusion's largest t drawn (paper: 0.99)")
    ap.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="objects-2view's objects: the held-out test objects, or validation objects to choose on",
    )
    ap.add_argument("--out", default="bench-out/sparsefusion")
    ap.add_argument("--record", help="result file the run adds to (default OUT/sparsefusion.json)")
    ap.add_argument("--lpips-weights", default="../shared/weights")
    ap.add_argument("--progress", action="store_true", help="show each fit's progress bar")
    ap.add_argument("--table", action="store_true", help="print the record's tables as Markdown and run nothing")
    ap.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="override SparseFusionConfig fields of the fitted prior rows (choose on --split val)",
    )
    args = ap.parse_args()
    try:
        args.overrides = config_overrides(SparseFusionConfig, args.set)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.table:
        path = Path(args.record) if args.record else Path(args.out) / "sparsefusion.json"
        if not path.is_file():
            print(f"error: no record at {path}; pass --record FILE", file=sys.stderr)
            return 2
        for label, rows in json.loads(path.read_text())["results"].items():
            print(f"{label}\n\n{markdown(rows)}\n")
        return 0
    weights = args.lpips_weights if Path(args.lpips_weights).exists() else None
    env = environment_info()  # versions and machine, kept with each row (its command names the device)
    vldm = from_pretrained(resolve_model_dir(args.model), resolve_device(args.device)).eval()
    out = Path(args.out)
    command = " ".join(["python", *sys.argv])
    # Runs with different rows, protocols or settings add to one record; each row keeps the command that scored it.
    record_path = Path(args.record) if args.record else out / "sparsefusion.json"
    record: dict = json.loads(record_path.read_text()) if record_path.is_file() else {"results": {}}
    record.pop("command", None)
    for protocol in args.protocols:
        for row in args.rows:
            folder = row_folder(row, args)
            cache = out / "scenes" / protocol / folder
            label = protocol if args.split == "test" or not protocol.startswith("objects") else f"{protocol}-val"
            key = row_key(row, args)
            kept = record["results"].get(label, {}).get(key, {})
            if protocol == "objects-2view":
                if not Path(args.objects).exists():
                    print(f"skipping {protocol}: {args.objects} not found", flush=True)
                    break
                card = json.loads((Path(args.objects) / "card.json").read_text())
                per = []
                for oi in card["splits"][args.split][: args.n_objects]:
                    scene = load_object(args.objects, oi)
                    split = get_protocol(protocol)(oi, len(scene))
                    from_record(cache / f"{oi}.json", kept, folder, str(oi))
                    per.append({**cached_figures(cache / f"{oi}.json", score, scene,
                                                 list(split.inputs), scene, list(split.evaluation), row, args, vldm,
                                                 weights), "scene": str(oi)})  # fmt: skip
                res = mean_figures(per)
            else:
                path = args.lego if protocol.startswith("lego") else args.llff
                if not Path(path).exists():
                    print(f"skipping {protocol}: {path} not found", flush=True)
                    break
                scene_in, ev_scene, split = protocol_scenes(path, protocol)
                name = Path(path).name
                from_record(cache / f"{name}.json", kept, folder, name)
                res = cached_figures(cache / f"{name}.json", score, scene_in,
                                     list(split.inputs), ev_scene, list(split.evaluation), row, args, vldm,
                                     weights)  # fmt: skip
                res = {**res, "scenes": 1, "scene": name}
            phases = time_split(res.get("per_object", [res]))
            record["results"].setdefault(label, {})[key] = {**res, "time_split": phases, "command": command,
                                                            "folder": folder, "env": env}  # fmt: skip
            m = res["means"]
            print(f"{label:18s} {key:13s} {format_metrics(m)}  ({res['seconds']:.0f} s per scene, "
                  f"{res['scenes']} scenes)", flush=True)  # fmt: skip
            record_path.parent.mkdir(parents=True, exist_ok=True)
            if phases:
                print("    seconds per scene: " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()), flush=True)
            record_path.write_text(json.dumps(record, indent=1))
    print(f"wrote {record_path}; reproduce: {command}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
