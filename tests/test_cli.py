"""The command line: demo and info on real data or fixtures."""

from fewview.cli import main

from .helpers import make_cams, write_llff

# The README states the demo's quality on the example object's 9 held-out views from its first 2 views: the no-prior
# fit 11.5 dB (500 steps); SparseFusion with the shipped vldm-v 16.5 dB (300 steps), floor 16.0.
DEMO_PSNR, DEMO_TOLERANCE = 11.5, 0.6
DEMO_SF_PSNR = 16.0


def test_demo_on_the_shipped_example_reaches_the_stated_quality(tmp_path, capsys, monkeypatch):
    import json

    from fewview.methods.sparsefusion import SparseFusionConfig
    from fewview.pretrained import shipped_model_dir

    monkeypatch.delenv("FEWVIEW_DEMO_SCENE", raising=False)
    out_dir = tmp_path / "demo"
    assert main(["demo", "--out", str(out_dir), "--quiet"]) == 0  # the default run a new user gets
    out = capsys.readouterr().out
    assert "example_object" in out and "blender-split-2view" in out and "PSNR" in out
    with_prior = (shipped_model_dir(SparseFusionConfig().sf_model) / "config.json").is_file()
    runs = ["no-prior", "sparsefusion"] if with_prior else ["no-prior"]
    for run in runs:
        for name in ("metrics.json", "report.html", "checkpoint/field.safetensors"):
            assert (out_dir / run / name).exists(), (run, name)
    final = out_dir / runs[-1]
    assert (final / "turntable.mp4").exists() and (final / "turntable.gif").exists()
    assert (final / "mesh.ply").exists() or "mesh: skipped" in out
    page = (out_dir / "report.html").read_text()
    assert (out_dir / "comparison.png").exists() and "no prior" in page
    means = {r: json.loads((out_dir / r / "metrics.json").read_text())["means"] for r in runs}
    assert abs(means["no-prior"]["psnr"] - DEMO_PSNR) <= DEMO_TOLERANCE, means
    assert means["no-prior"]["lpips_alex"] is not None  # the shipped LPIPS weights are found on a fresh install
    if with_prior:
        assert "SparseFusion" in page and means["sparsefusion"]["psnr"] >= DEMO_SF_PSNR, means
    else:
        assert "SparseFusion: skipped" in out


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
