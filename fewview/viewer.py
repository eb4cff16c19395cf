"""``fewview view RUN_DIR``: an interactive web view of a run folder, served locally with viser.

What the run holds is shown: 3D Gaussians as splats, meshes and point clouds written by ``export``/``demo``,
the input cameras as frustums with their images, the evaluation cameras, the fit's metrics, and for
radiance-field runs an on-demand render of the browser's viewpoint -- a small preview while the camera
moves, the full resolution once it is still. Runs with sampled scenes (``samples/<name>/``, each a run
folder) get a sample switcher. Reading a run never executes code from it: JSON, safetensors, PNG, PLY,
GLB and OBJ only.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cameras import Cameras, intrinsics_matrix, nearest_point_to_axes
from .cameras.convert import rotmat_to_quat
from .checkpoint import find_checkpoint
from .evaluation import to_uint8
from .methods.runs import cameras_from_json

INSTALL_HINT = 'pip install "fewview[viewer]" (or pip install -e ".[viewer]" in a checkout)'
MESH_EXTS = (".glb", ".obj", ".ply")


class ViewerError(RuntimeError):
    """The run folder cannot be shown; the message is one line."""


# ------------------------------------------------------------------ run contents
@dataclass
class RunContents:
    run_dir: Path
    config: dict
    metrics: dict | None
    input_cameras: Cameras | None
    input_images: list[np.ndarray | None]
    eval_cameras: Cameras | None
    eval_names: list[str]
    meshes: list[Path] = field(default_factory=list)
    point_clouds: list[Path] = field(default_factory=list)
    samples: dict[str, Path] = field(default_factory=dict)  # sample name -> run folder with a checkpoint
    kind: str | None = None  # "field" | "gaussians" | None (no checkpoint)


def _checkpoint_kind(run_dir: Path) -> str | None:
    ck = find_checkpoint(run_dir / "checkpoint")
    if ck is None:
        return None
    return "gaussians" if json.loads((ck / "meta.json").read_text()).get("kind") == "gaussians" else "field"


def _image(path: Path) -> np.ndarray | None:
    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _is_3dgs_ply(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    return b"f_dc_0" in head


def read_run(run_dir: str | Path) -> RunContents:
    """What a run folder holds, read from its JSON, PNG and geometry files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ViewerError(f"{run_dir}: run folder not found")
    cfg_path, met_path = run_dir / "config.json", run_dir / "metrics.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    metrics = json.loads(met_path.read_text()) if met_path.is_file() else None
    samples = {p.name: p for p in sorted((run_dir / "samples").glob("*")) if _checkpoint_kind(p)}
    kind = _checkpoint_kind(run_dir)
    if kind is None and samples:
        kind = _checkpoint_kind(next(iter(samples.values())))
    meshes, clouds = [], []
    for p in sorted(run_dir.iterdir()):
        if p.suffix.lower() in MESH_EXTS and p.is_file() and not (p.suffix == ".ply" and _is_3dgs_ply(p)):
            (clouds if p.stem.startswith("point") else meshes).append(p)
    in_cams = cameras_from_json(config["input_cameras"]) if "input_cameras" in config else None
    images: list[np.ndarray | None] = []
    if in_cams is not None:
        for frame in config.get("input_frames", [""] * len(in_cams)):
            img = _image(run_dir / "renders" / f"input_{Path(frame).stem}.png")
            images.append(img if img is not None else _image(Path(frame)))
    ev_cams, ev_names = None, []
    if metrics and "evaluation_cameras" in metrics:
        ev_cams = cameras_from_json(metrics["evaluation_cameras"])
        ev_names = [str(v) for v in metrics.get("evaluation_names", metrics.get("evaluation_views", []))]
    if kind is None and not meshes and not clouds:
        raise ViewerError(f"{run_dir}: nothing to show (no checkpoint/, mesh or point cloud; is it a run folder?)")
    return RunContents(run_dir, config, metrics, in_cams, images, ev_cams, ev_names, meshes, clouds, samples, kind)


# ------------------------------------------------------------------ camera maths
def viewer_camera(position, wxyz, fov_y: float, aspect: float, height: int) -> Cameras:
    """fewview camera for a viser camera (OpenCV axes like fewview: +z forward, -y up; vertical fov)."""
    from .cameras.convert import quat_to_rotmat

    width = max(int(round(height * aspect)), 1)
    f = 0.5 * height / np.tan(0.5 * fov_y)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = quat_to_rotmat(torch.as_tensor(np.asarray(wxyz, dtype=np.float64)))
    c2w[:3, 3] = torch.as_tensor(np.asarray(position, dtype=np.float64))
    return Cameras(c2w[None].float(), intrinsics_matrix(f, f, width / 2, height / 2)[None].float(),
                   torch.tensor([height, width]))  # fmt: skip


def frustum_pose(cams: Cameras, i: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(wxyz, position, vertical fov, aspect) of camera ``i`` for viser."""
    wxyz = rotmat_to_quat(cams.c2w[i, :3, :3].double()).numpy()
    h, w = (int(v) for v in cams.size[i])
    fov = 2 * float(np.arctan(0.5 * h / float(cams.fy[i])))
    return wxyz, cams.c2w[i, :3, 3].double().numpy(), fov, w / h


def initial_view(cams: Cameras, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(position, up, vertical fov) of the first view: towards the inputs' mean direction but 30 degrees
    higher and a little farther, so that their frustums frame the object from below instead of covering it."""
    c = cams.centers.double().numpy()
    up = -cams.c2w[:, :3, 1].double().mean(0).numpy()
    up /= np.linalg.norm(up)
    d = c - target
    dist = float(np.linalg.norm(d, axis=1).mean())
    mean = d.mean(0)
    direction = mean if np.linalg.norm(mean) > 0.3 * dist else d[0]
    horizontal = direction - (direction @ up) * up
    horizontal /= max(np.linalg.norm(horizontal), 1e-9)
    elevation = np.arcsin(np.clip(direction @ up / np.linalg.norm(direction), -1, 1)) + np.radians(30)
    elevation = min(elevation, np.radians(75))
    direction = np.cos(elevation) * horizontal + np.sin(elevation) * up
    return target + 1.2 * dist * direction, up, frustum_pose(cams, 0)[2]


def gaussian_splats(model) -> dict[str, np.ndarray]:
    """Centres, covariances, colours (SH DC) and opacities of a GaussianModel for viser."""
    from .gaussians.project import covariance_3d
    from .gaussians.sh import sh_to_rgb

    with torch.no_grad():
        cov = covariance_3d(model.scales, model.normalized_quats)
        rgb = sh_to_rgb(model.sh[:, 0]).clamp(0, 1)
        out = {"centers": model.means, "covariances": cov, "rgbs": rgb, "opacities": model.opacities.reshape(-1, 1)}
        return {k: v.detach().float().numpy() for k, v in out.items()}


# ------------------------------------------------------------------ the viewer
@dataclass
class ViewerOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    preview_height: int = 64  # on-demand render while the camera moves
    full_height: int = 0  # once still (0: the run's input resolution)
    still_seconds: float = 0.25  # camera still this long -> full resolution
    device: str = "cpu"


@dataclass
class RenderEvent:
    version: int  # the camera update it answers
    height: int
    width: int
    camera: Cameras
    seconds: float


class _ClientRenderer:
    """Renders one browser's viewpoint: a preview at once while the camera moves, full size once still."""

    def __init__(self, viewer: RunViewer, client):
        self.viewer, self.client = viewer, client
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.version = 0
        self.latest: dict = {}
        client.camera.on_update(self._on_camera)
        if getattr(client.camera, "update_timestamp", 0.0):
            self._on_camera(client.camera)
        threading.Thread(target=self._loop, daemon=True, name=f"render-{client.client_id}").start()

    def _on_camera(self, cam) -> None:
        with self.lock:
            self.version += 1
            self.latest = dict(pos=np.array(cam.position), wxyz=np.array(cam.wxyz), fov=float(cam.fov),
                               aspect=float(cam.aspect), t=time.monotonic())  # fmt: skip
        self.changed.set()

    def invalidate(self) -> None:
        with self.lock:
            self.version += 1
            if self.latest:
                self.latest["t"] = time.monotonic() - self.viewer.opts.still_seconds  # straight to full size
        self.changed.set()

    def _loop(self) -> None:
        opts, sent = self.viewer.opts, (-1, 0)  # (version, height) of the last image sent
        while not self.viewer.stopped.is_set():
            self.changed.wait(timeout=0.05)
            with self.lock:
                snap, version = dict(self.latest), self.version
            if not snap:
                continue
            full = self.viewer.full_height()
            height = full if time.monotonic() - snap["t"] >= opts.still_seconds else opts.preview_height
            if sent[0] == version and sent[1] >= height:
                self.changed.clear()
                continue
            cam = viewer_camera(snap["pos"], snap["wxyz"], snap["fov"], snap["aspect"], height)
            t = time.perf_counter()
            rgb = self.viewer.state().render(cam)["rgb"]
            img = to_uint8(rgb)
            with self.lock:
                stale = self.version != version
            if stale and height == full:
                continue  # the camera moved during a full-size render: start again from a preview
            self.client.scene.set_background_image(img, format="jpeg", jpeg_quality=92)
            sent = (version, height)
            self.viewer.renders.append(RenderEvent(version, img.shape[0], img.shape[1], cam, time.perf_counter() - t))


class RunViewer:
    """Serves a run folder; ``start()`` returns at once, ``wait()`` blocks until interrupted."""

    def __init__(self, run_dir: str | Path, options: ViewerOptions | None = None):
        self.opts = options or ViewerOptions()
        self.run = read_run(run_dir)
        self.states: dict[str, object] = {}
        self.sample = next(iter(self.run.samples), "") if self.run.samples else ""
        self.renders: list[RenderEvent] = []  # every on-demand render sent, newest last
        self.clients: list[_ClientRenderer] = []
        self.layers: dict[str, list] = {"inputs": [], "evaluation": []}
        self.server = None
        self.stopped = threading.Event()

    # -- state -------------------------------------------------------------
    def state(self, sample: str | None = None):
        """The fitted scene of the run (or of one of its samples), loaded once from safetensors."""
        from .methods.scene_fit import load_fit

        key = self.sample if sample is None else sample
        if key not in self.states:
            folder = self.run.samples[key] if key else self.run.run_dir
            self.states[key] = load_fit(folder, self.opts.device)[0]
        return self.states[key]

    def full_height(self) -> int:
        if self.opts.full_height:
            return self.opts.full_height
        if self.run.input_cameras is not None:
            return int(self.run.input_cameras.size[0, 0])
        return 256

    def look_at_point(self) -> np.ndarray:
        cams = self.run.input_cameras
        if cams is not None and len(cams) >= 2:
            return nearest_point_to_axes(cams).double().numpy()
        if self.run.kind == "field":
            return self.state().field.aabb.mean(0).double().numpy()
        if self.run.kind == "gaussians":
            return self.state().model.means.median(0).values.double().numpy()
        return np.zeros(3)

    # -- scene -------------------------------------------------------------
    def start(self):
        try:
            import viser
        except ImportError:
            raise ViewerError(f"fewview view needs viser: {INSTALL_HINT}") from None
        import trimesh

        if self.run.kind is not None:
            self.state()  # load before serving: a bad checkpoint fails here, in one line
        try:
            server = viser.ViserServer(host=self.opts.host, port=self.opts.port, verbose=False)
        except OSError as e:
            raise ViewerError(f"cannot serve on {self.opts.host}:{self.opts.port} ({e.strerror or e}); "
                              "pass --port with a free port") from None  # fmt: skip
        if server.get_port() != self.opts.port:  # viser moves to the next free port by itself
            server.stop()
            raise ViewerError(f"port {self.opts.port} on {self.opts.host} is in use; pass --port with a free port")
        self.server = server
        run = self.run
        target = self.look_at_point()
        if run.input_cameras is not None:
            pos, up, fov = initial_view(run.input_cameras, target)
            server.scene.set_up_direction(up)
            server.initial_camera.position = pos
            server.initial_camera.look_at = target
            server.initial_camera.up_direction = up
            server.initial_camera.fov = fov
        scale = self._frustum_scale(target)
        if run.input_cameras is not None:
            for i in range(len(run.input_cameras)):
                wxyz, pos, fov, aspect = frustum_pose(run.input_cameras, i)
                self.layers["inputs"].append(server.scene.add_camera_frustum(
                    f"/inputs/{i}", fov, aspect, scale=scale, color=(230, 120, 20), image=run.input_images[i],
                    wxyz=wxyz, position=pos))  # fmt: skip
        if run.eval_cameras is not None:
            for i in range(len(run.eval_cameras)):
                wxyz, pos, fov, aspect = frustum_pose(run.eval_cameras, i)
                self.layers["evaluation"].append(server.scene.add_camera_frustum(
                    f"/evaluation/{i}", fov, aspect, scale=0.6 * scale, color=(60, 110, 220), wxyz=wxyz,
                    position=pos))  # fmt: skip
        for p in run.meshes:
            mesh = trimesh.load(p, force="mesh")
            self.layers.setdefault("meshes", []).append(
                server.scene.add_mesh_trimesh(f"/meshes/{p.stem}", mesh, visible=run.kind is None))
        for p in run.point_clouds:
            pc = trimesh.load(p)
            pts = np.asarray(pc.vertices, dtype=np.float32)
            cols = getattr(pc, "colors", None)
            cols = np.asarray(cols)[:, :3] if cols is not None and len(cols) == len(pts) else (200, 200, 200)
            self.layers.setdefault("point clouds", []).append(server.scene.add_point_cloud(
                f"/points/{p.stem}", pts, cols, point_size=0.05 * scale, visible=run.kind is None))  # fmt: skip
        if run.kind == "gaussians":
            self._show_splats()
        self._gui(server)
        if run.kind == "field":
            server.on_client_connect(lambda client: self.clients.append(_ClientRenderer(self, client)))
        return server

    def _frustum_scale(self, target: np.ndarray) -> float:
        cams = self.run.input_cameras
        if cams is None:
            return 0.2
        return 0.1 * float(np.linalg.norm(cams.centers.double().numpy() - target, axis=1).mean())

    def _show_splats(self) -> None:
        self.server.scene.add_gaussian_splats("/gaussians", **gaussian_splats(self.state().model))

    def _gui(self, server) -> None:
        run = self.run
        lines = [f"**{run.run_dir.name}**"]
        m = run.metrics
        if m:
            lines.append(f"{m.get('method', '')} on {m.get('protocol', '')}, inputs {m.get('input_views', '')}")
            means = m.get("means", {})
            parts = [f"{k.upper()} {means[k]:.3f}" for k in ("psnr", "ssim", "lpips") if means.get(k) is not None]
            lines.append(" · ".join(parts))
            if "fit_seconds" in m:
                lines.append(f"fit {m['fit_seconds']:.0f} s, {m.get('steps', '?')} steps")
        elif run.config:
            fit = run.config.get("fit", {})
            lines.append(f"{fit.get('representation', '?')} fit, {fit.get('steps', '?')} steps, "
                         f"inputs {run.config.get('inputs', '')}")  # fmt: skip
        lines.append("orange: input cameras · blue: evaluation cameras")
        if run.kind == "field":
            lines.append("the field is rendered for your viewpoint (preview while moving)")
        server.gui.add_markdown("  \n".join(lines))
        if run.samples:
            dd = server.gui.add_dropdown("sample", tuple(run.samples), initial_value=self.sample)

            dd.on_update(lambda _event: self.select_sample(dd.value))

        for name, handles in self.layers.items():
            if not handles:
                continue
            cb = server.gui.add_checkbox(name, initial_value=all(h.visible for h in handles))

            @cb.on_update
            def _(_event, hs=handles, box=cb) -> None:
                for h in hs:
                    h.visible = box.value

    def select_sample(self, name: str) -> None:
        """Show sampled scene ``name`` (a folder under ``samples/``): new splats, or fresh field renders."""
        if name not in self.run.samples:
            raise ViewerError(f"no sample {name!r} in {self.run.run_dir / 'samples'}")
        self.sample = name
        if self.run.kind == "gaussians" and self.server is not None:
            self._show_splats()
        for c in self.clients:
            c.invalidate()

    def stop(self) -> None:
        self.stopped.set()
        if self.server is not None:
            self.server.stop()

    def wait(self) -> None:
        try:
            while not self.stopped.is_set():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
