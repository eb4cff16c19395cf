"""The ``fewview`` command. It parses arguments, calls library code and prints; nothing else."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .cameras import CameraError
from .data import DataError


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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DataError, CameraError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
