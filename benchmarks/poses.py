"""Benchmark `poses`: `fewview poses` on views of a textured object rendered by fewview, against their true cameras.

Prints the camera-centre error (relative to the rig's size) and the orientation and focal-length errors after a
similarity alignment, and the wall time.

    python benchmarks/poses.py --views 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fewview.data import load_scene  # noqa: E402
from fewview.data.poses import estimate_poses  # noqa: E402
from tests.helpers import save_png, similarity_align, textured_box_scene  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--size", type=int, nargs=2, default=(240, 320), help="height width")
    args = ap.parse_args()
    cams, rgb, _ = textured_box_scene(args.views, *args.size)
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for i in range(len(rgb)):
            save_png(photos / f"IMG_{i:03d}.png", rgb[i])
        t = time.perf_counter()
        rec = estimate_poses(photos, Path(tmp) / "scene", progress=False)
        seconds = time.perf_counter() - t
        scene = load_scene(Path(tmp) / "scene")
    gt = cams[[int(f.rsplit("IMG_", 1)[1][:3]) for f in scene.frames]]
    est_c, gt_c = scene.cameras.centers.double().numpy(), gt.centers.double().numpy()
    s, r, tr = similarity_align(est_c, gt_c)
    spread = np.linalg.norm(gt_c - gt_c.mean(0), axis=1).mean()
    centre = np.linalg.norm(s * est_c @ r.T + tr - gt_c, axis=1).max() / spread
    rot = max(np.degrees(np.arccos(np.clip((np.trace((r @ a).T @ b) - 1) / 2, -1, 1)))
              for a, b in zip(scene.cameras.c2w[:, :3, :3].double().numpy(), gt.c2w[:, :3, :3].double().numpy(),
                              strict=True))  # fmt: skip
    focal = np.abs(scene.cameras.K[:, 0, 0].double().numpy() / float(gt.K[0, 0, 0]) - 1).max()
    print(f"{len(rec['posed'])}/{rec['num_photos']} posed in {seconds:.1f} s; worst camera: centre "
          f"{100 * centre:.2f} % of the rig, orientation {rot:.3f} deg, focal {100 * focal:.3f} %; reprojection "
          f"{rec['reprojection_error_px']:.2f} px")  # fmt: skip
    print(f"reproduce: python benchmarks/poses.py --views {args.views} --size {args.size[0]} {args.size[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
