"""Screenshots of `fewview view` in headless Chromium, for the docs.

    fewview demo --out fewview-demo
    fewview eval fewview/assets/example_object --protocol blender-split --representation gaussians \
        --w-silhouette 1 --gs-hull-prune --gs-w-opacity 0.5 --gs-reset-every 500 --steps 1500 --out runs/demo-gs
    python benchmarks/viewer_screenshots.py fewview-demo/no-prior docs/images/viewer_demo.png
    python benchmarks/viewer_screenshots.py runs/demo-gs docs/images/viewer_gaussians.png

Needs the [viewer] extra, selenium and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fewview.viewer import RunViewer, ViewerOptions  # noqa: E402
from tests.helpers import chromium_driver, free_port  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, nargs=2, default=(1000, 700), help="window width height")
    ap.add_argument("--full-height", type=int, default=256, help="field render height")
    ap.add_argument("--wait", type=float, default=8.0, help="seconds for splats/renders to settle")
    args = ap.parse_args()
    viewer = RunViewer(args.run, ViewerOptions(port=free_port(), full_height=args.full_height))
    viewer.start()
    drv = chromium_driver(shutil.which("chromium"), shutil.which("chromedriver"), *args.size)
    try:
        from selenium.webdriver.common.by import By

        drv.get(f"http://127.0.0.1:{viewer.opts.port}")
        t = time.monotonic()
        while viewer.run.kind == "field" and not any(r.height == args.full_height for r in viewer.renders):
            if time.monotonic() - t > 300:
                raise SystemExit("no full-size render within 5 minutes")
            time.sleep(0.2)
        time.sleep(args.wait)
        for b in drv.find_elements(By.CSS_SELECTOR, "button.mantine-Notification-closeButton, "
                                   "button[class*='Notification'][class*='close']"):  # fmt: skip
            b.click()
        time.sleep(1.0)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(args.out)
    finally:
        drv.quit()
        viewer.stop()
    print(f"wrote {args.out}; reproduce: python {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
