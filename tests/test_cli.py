"""The command line: demo and info on real data or fixtures."""

from fewview.cli import main

from .helpers import make_cams, write_llff

# The README states the demo's quality: 18.5 dB on the example object's 9 held-out views (no prior).
DEMO_PSNR, DEMO_TOLERANCE = 18.5, 0.6


def test_demo_on_the_shipped_example_reaches_the_stated_quality(tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.delenv("FEWVIEW_DEMO_SCENE", raising=False)
    out_dir = tmp_path / "demo"
    assert main(["demo", "--out", str(out_dir), "--quiet"]) == 0  # the default run a new user gets
    out = capsys.readouterr().out
    assert "example_object" in out and "blender-split" in out and "PSNR" in out
    for name in ("metrics.json", "report.html", "turntable.mp4", "turntable.gif", "checkpoint/field.safetensors"):
        assert (out_dir / name).exists(), name
    assert (out_dir / "mesh.ply").exists() or "mesh: skipped" in out
    means = json.loads((out_dir / "metrics.json").read_text())["means"]
    assert abs(means["psnr"] - DEMO_PSNR) <= DEMO_TOLERANCE, means
    assert means["lpips_alex"] is not None  # the shipped LPIPS weights are found on a fresh install


def test_info_on_fixture(tmp_path, capsys):
    write_llff(tmp_path, make_cams(n=4))
    assert main(["info", str(tmp_path), "--downscale", "2"]) == 0
    assert "4 views, 24x20" in capsys.readouterr().out


def test_shipped_example_is_reproduced_by_its_command(tmp_path):
    import hashlib

    from fewview.cli import EXAMPLE_OBJECT

    assert main(["data", "example", "--out", str(tmp_path / "ex")]) == 0
    for name in ("transforms_train.json", "transforms_test.json"):
        assert (tmp_path / "ex" / name).read_text() == (EXAMPLE_OBJECT / name).read_text()
    pngs = sorted(p.relative_to(EXAMPLE_OBJECT) for p in EXAMPLE_OBJECT.glob("*/*.png"))
    assert len(pngs) == 12
    for p in pngs:
        assert (
            hashlib.sha256((tmp_path / "ex" / p).read_bytes()).digest()
            == hashlib.sha256((EXAMPLE_OBJECT / p).read_bytes()).digest()
        )
    total = sum(p.stat().st_size for p in EXAMPLE_OBJECT.rglob("*") if p.is_file())
    assert total < 1_000_000


def test_missing_demo_scene_is_a_one_line_error(tmp_path, capsys):
    assert main(["demo", "--scene", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "nope" in capsys.readouterr().err
