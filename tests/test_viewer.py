"""`fewview view` in a real browser: headless Chromium (selenium) on a tiny fitted run."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewview.cameras import look_at
from fewview.methods.fit_config import FitConfig
from fewview.methods.protocol_run import run_protocol
from fewview.methods.scene_fit import load_fit

from .helpers import chromium_driver, free_port

pytest.importorskip("viser", reason="the [viewer] extra (viser) is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Chromium and chromedriver are absent (apt-get install chromium chromium-driver)",
)
EXAMPLE = Path(__file__).resolve().parents[1] / "fewview" / "assets" / "example_object"
W, H = 800, 600


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    gs = FitConfig(representation="gaussians", steps=150, w_silhouette=1.0, gs_hull_prune=True)
    field = FitConfig(steps=120, upsample_step=40, grid_res=32, grid_res_final=64, w_silhouette=1.0)
    for name, cfg in (("gaussians", gs), ("field", field)):
        run_protocol(EXAMPLE, "blender-split", root / name, cfg, progress=False, lpips=False)
    return root


@pytest.fixture()
def browser():
    drv = chromium_driver(CHROMIUM, CHROMEDRIVER, W, H)
    yield drv
    drv.quit()


def screenshot(drv) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(drv.get_screenshot_as_png())).convert("RGB")).astype(np.float32) / 255


def wait_for_canvas(drv, url: str, timeout: float = 60) -> None:
    from selenium.webdriver.common.by import By

    drv.get(url)
    t = time.monotonic()
    while not drv.find_elements(By.TAG_NAME, "canvas"):
        assert time.monotonic() - t < timeout, "the viewer page never showed a canvas"
        time.sleep(0.2)


def scene_window(img: np.ndarray) -> tuple[slice, slice]:
    """The middle of the page, clear of the control panel (top right) and notifications (top left)."""
    h, w = img.shape[:2]
    return slice(int(0.35 * h), int(0.95 * h)), slice(int(0.2 * w), int(0.8 * w))


def rendered_at(state, position, target, up, fov, h, w) -> dict:
    from fewview.cameras.convert import rotmat_to_quat
    from fewview.viewer import viewer_camera

    c2w = look_at(torch.as_tensor(position)[None], torch.as_tensor(target)[None], torch.as_tensor(up)[None])
    wxyz = rotmat_to_quat(c2w[0, :3, :3].double()).numpy()
    return state.render(viewer_camera(position, wxyz, fov, w / h, h))


def test_gaussian_run_in_chromium(runs, browser, tmp_path):
    """`fewview view` (the real command) serves the splats; the object's pixels are where the initial camera
    looks: where fewview's own rasterizer covers the object, the page is not white, and around it, it is."""
    from fewview.cameras import nearest_point_to_axes
    from fewview.methods.protocol_run import input_cameras
    from fewview.viewer import initial_view

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fewview", "view", str(runs / "gaussians"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        line = ""
        t = time.monotonic()
        while "viewing" not in line:
            line = proc.stdout.readline()
            assert proc.poll() is None and time.monotonic() - t < 60, f"fewview view did not start: {line}"
        wait_for_canvas(browser, f"http://127.0.0.1:{port}")
        time.sleep(6)  # software WebGL: let the splats sort and draw
        img = screenshot(browser)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / "viewer_gaussians.png")
    assert img.std() > 0.05, "blank page"
    state, config = load_fit(runs / "gaussians")
    cams = input_cameras(config)
    target = nearest_point_to_axes(cams).double().numpy()
    pos, up, fov = initial_view(cams, target)
    h, w = img.shape[:2]
    alpha = rendered_at(state, pos, target, up, fov, h, w)["opacity"][0].numpy()
    ys, xs = scene_window(img)
    not_white = img[ys, xs].min(-1) < 0.85
    obj, empty = alpha[ys, xs] > 0.7, alpha[ys, xs] < 0.02
    assert obj.sum() > 500 and empty.sum() > 500
    assert not_white[obj].mean() > 0.8
    assert (~not_white[empty]).mean() > 0.7


def test_field_render_follows_the_camera(runs, browser, tmp_path):
    """Moving the browser's camera through viser's client API brings a full-size render of the field for
    that camera, which is what the page then shows."""
    from fewview.viewer import RunViewer, ViewerOptions

    viewer = RunViewer(runs / "field", ViewerOptions(port=free_port(), full_height=96, still_seconds=0.2))
    server = viewer.start()
    try:
        wait_for_canvas(browser, f"http://127.0.0.1:{viewer.opts.port}")
        t = time.monotonic()
        while not any(r.height == 96 for r in viewer.renders):
            assert time.monotonic() - t < 60, "no full-size render arrived"
            time.sleep(0.1)
        assert viewer.renders[0].height == viewer.opts.preview_height  # a preview first
        first = screenshot(browser)
        (client,) = server.get_clients().values()
        target = viewer.look_at_point()
        pos = target + np.array([0.0, -2.2, 1.6])
        with client.atomic():
            client.camera.position = pos
            client.camera.look_at = target
        t = time.monotonic()
        while not any(r.height == 96 and np.allclose(r.camera.centers[0].numpy(), pos, atol=1e-3)
                      for r in viewer.renders):  # fmt: skip
            assert time.monotonic() - t < 60, "no render for the new camera arrived"
            time.sleep(0.1)
        time.sleep(1.0)
        moved = screenshot(browser)
        event = [r for r in viewer.renders if np.allclose(r.camera.centers[0].numpy(), pos, atol=1e-3)][-1]
    finally:
        viewer.stop()
    Image.fromarray((moved * 255).astype(np.uint8)).save(tmp_path / "viewer_field.png")
    ys, xs = scene_window(moved)
    assert np.abs(moved[ys, xs] - first[ys, xs]).mean() > 0.01  # the page changed with the camera
    # the page shows the render for that camera (stretched to the canvas)
    rgb = viewer.state().render(event.camera)["rgb"]
    shown = torch.nn.functional.interpolate(rgb[None], size=moved.shape[:2], mode="bilinear")[0].permute(1, 2, 0)
    a, b = moved[ys, xs].ravel(), shown.numpy()[ys, xs].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.8
