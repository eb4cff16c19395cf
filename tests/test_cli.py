"""The command line: demo and info on real data or fixtures."""

from fewview.cli import main

from .helpers import make_cams, write_llff
from .test_readers import SHARED, needs_shared


@needs_shared
def test_demo_smoke(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    assert main(["demo", "--scene", str(SHARED / "lego"), "--out", str(out_dir), "--steps", "30", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "lego-3view" in out and "PSNR" in out
    for name in ("metrics.json", "report.html", "turntable.mp4", "turntable.gif", "checkpoint/field.safetensors"):
        assert (out_dir / name).exists(), name
    assert (out_dir / "mesh.ply").exists() or "mesh: skipped" in out


def test_info_on_fixture(tmp_path, capsys):
    write_llff(tmp_path, make_cams(n=4))
    assert main(["info", str(tmp_path), "--downscale", "2"]) == 0
    assert "4 views, 24x20" in capsys.readouterr().out


def test_demo_without_scene_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEWVIEW_DEMO_SCENE", raising=False)
    import fewview.cli as cli

    monkeypatch.setattr(cli, "_default_demo_scene", lambda: None)
    assert main(["demo"]) == 2
    assert "--scene" in capsys.readouterr().err
