"""benchmarks/sparsefusion.py: its options reach the fitted rows' configs and keep their cached figures apart."""

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from fewview.evaluation import config_overrides, settings_folder
from fewview.methods.sparsefusion import SparseFusionConfig

_SCRIPT = Path(__file__).parents[1] / "benchmarks" / "sparsefusion.py"
_spec = importlib.util.spec_from_file_location("sparsefusion_bench", _SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def args(**kw):
    base = {"model": bench.DEFAULT_MODEL, "device": "cpu", "steps": 300, "progress": False, "guidance": 1.0,
            "max_denoise_steps": 5, "t_max": 0.99, "overrides": {}, "sample_steps": 50}
    return argparse.Namespace(**{**base, **kw})


def test_fitted_rows_get_their_objective_and_the_chosen_t_max():
    for row, objective in bench.FITTED.items():
        cfg = bench.config(row, args(t_max=0.9))
        assert cfg.steps == 300 and cfg.upsample_step == 100
        if objective is None:
            assert not hasattr(cfg, "sf_objective")
        else:
            assert (cfg.sf_objective, cfg.sf_t_max, cfg.sf_max_denoise_steps) == (objective, 0.9, 5)
    a, b = (settings_folder("sparsefusion", {}, bench.config("sparsefusion", args(t_max=t))) for t in (0.99, 0.9))
    assert a != b


def test_set_overrides_are_typed_reach_the_prior_rows_and_get_their_own_folder():
    items = ["step_voxels=1", "sf_path_cameras=20", "use_masks=no", "sf_path=official"]
    over = config_overrides(SparseFusionConfig, items)
    assert over == {"step_voxels": 1.0, "sf_path_cameras": 20, "use_masks": False, "sf_path": "official"}
    assert isinstance(over["step_voxels"], float)
    for bad, match in (("step_voxel=1", "no field 'step_voxel'"), ("steps", "no field"),
                       ("steps=many", "takes a int"), ("background=0,0,0", "only bool"),
                       ("use_masks=flase", "takes true or false")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            config_overrides(SparseFusionConfig, [bad])
    cfg = bench.config("sparsefusion", args(overrides={"step_voxels": 0.75}))
    assert cfg.step_voxels == 0.75 and cfg.steps == 300
    capped = bench.config("sparsefusion", args(overrides={"sf_max_denoise_steps": 10}))
    assert capped.sf_max_denoise_steps == 10  # --set wins over the flag it shares a field with
    assert "@max_denoise_steps=10@" in bench.row_folder("sparsefusion", args(overrides={"sf_max_denoise_steps": 10}))
    assert "@max_denoise_steps=5@" in bench.row_folder("sparsefusion", args())  # the folder names what ran
    assert bench.config("field", args(overrides={"step_voxels": 0.75})).step_voxels == 0.5  # the no-prior row as is
    a, b = (settings_folder("sparsefusion", {}, bench.config("sparsefusion", args(overrides=o)))
            for o in ({}, {"step_voxels": 0.75}))  # fmt: skip
    assert a != b


def test_another_vldm_gets_its_own_rows_and_folders():
    assert bench.DEFAULT_MODEL == "vldm-v"
    for row in bench.ROWS:
        same, other = args(), args(model="vldm")
        if row == "field":  # the no-prior fit reads no model
            assert bench.row_key(row, other) == row
            continue
        assert bench.row_key(row, same) == row
        assert bench.row_key(row, other).endswith("@model=vldm")
        assert bench.row_folder(row, same) != bench.row_folder(row, other)
        assert bench.row_label(bench.row_key(row, other)).endswith("(model=vldm)")
    assert bench.row_folder("vldm", args()) == "vldm@guidance=1.0@sample_steps=50"
    assert bench.row_folder("vldm", args(model="vldm")) == "vldm@guidance=1.0@model=vldm@sample_steps=50"


def test_committed_records_name_every_model_but_the_default():
    """Rows scored when `vldm` was the default are keyed `@model=vldm`; none names the default model."""
    for path in sorted((_SCRIPT.parent / "results").glob("sparsefusion*.json")):
        for rows in json.loads(path.read_text()).get("results", {}).values():
            for key, entry in rows.items():
                assert f"@model={bench.DEFAULT_MODEL}" not in key, (path.name, key)
                if "--model vldm " in entry.get("command", "") + " ":
                    assert key.endswith("@model=vldm"), (path.name, key)


def test_time_split_puts_the_unnamed_step_time_in_backward():
    scenes = [{"timings": {"cache": 2, "render": 1, "encode": 1, "denoise": 5, "decode": 1, "step": 10}},
              {"timings": {"cache": 0, "render": 3, "encode": 1, "denoise": 3, "decode": 1, "step": 10}}]  # fmt: skip
    split = bench.time_split(scenes)
    assert split["backward"] == pytest.approx(2.0) and split["denoise"] == 4 and split["cache"] == 1
    assert bench.time_split([{"means": {}}]) == {}


def test_scene_figures_come_back_from_the_record_only_with_the_same_settings(tmp_path):
    fig = {"means": {"psnr": 20.0}, "seconds": 3.0, "timings": {"step": 1.0}}
    entry = {"folder": "sparsefusion@steps=300", "per_object": [{**fig, "scene": "7"}, {**fig, "scene": "9"}]}
    bench.from_record(tmp_path / "a" / "7.json", entry, "sparsefusion@steps=1500", "7")
    assert not (tmp_path / "a" / "7.json").exists()  # other settings: refit
    bench.from_record(tmp_path / "a" / "8.json", entry, "sparsefusion@steps=300", "8")
    assert not (tmp_path / "a" / "8.json").exists()  # a scene the record lacks
    bench.from_record(tmp_path / "a" / "7.json", entry, "sparsefusion@steps=300", "7")
    assert json.loads((tmp_path / "a" / "7.json").read_text()) == fig
    (tmp_path / "a" / "9.json").write_text("{}")  # a scene already cached stays as it is
    bench.from_record(tmp_path / "a" / "9.json", entry, "sparsefusion@steps=300", "9")
    assert (tmp_path / "a" / "9.json").read_text() == "{}"
    single = {"folder": "eft@x", "scene": "lego", **fig, "scenes": 1, "command": "c", "time_split": {}}
    bench.from_record(tmp_path / "b" / "lego.json", single, "eft@x", "lego")
    assert json.loads((tmp_path / "b" / "lego.json").read_text()) == fig


def test_markdown_table_orders_rows_and_marks_the_best():
    def row(psnr, ssim, lp):
        return {"means": {"psnr": psnr, "ssim": ssim, "lpips_alex": lp}, "seconds": 5.0, "scenes": 2,
                "binned": {"45+": {"count": 3, "psnr": psnr - 1, "ssim": ssim, "lpips_alex": lp}}}  # fmt: skip

    text = bench.markdown({"sparsefusion": row(20.0, 0.7, 0.15), "field": row(13.0, 0.8, 0.3)})
    lines = text.splitlines()
    assert lines[2].startswith("| no prior") and lines[3].startswith("| SparseFusion")
    assert "| **20.00** | 0.700 | **0.150** |" in lines[3] and "| **0.800** |" in lines[2]
    assert "| 19.00 / 0.150 |" in lines[3]
    no_lpips = row(14.0, 0.5, 0.2)
    del no_lpips["means"]["lpips_alex"]
    assert "| **14.00** | **0.500** |  |" in bench.markdown({"field": no_lpips})
    # what evaluate_views writes without LPIPS weights: None in the means, no LPIPS in the angle bins
    unscored = row(14.0, 0.5, 0.2)
    unscored["means"].update(lpips_alex=None, lpips_unavailable="no weights")
    del unscored["binned"]["45+"]["lpips_alex"]
    table = bench.markdown({"field": unscored, "sparsefusion": row(20.0, 0.4, 0.1)})
    assert "| 14.00 | **0.500** |  |  | 13.00 |" in table and "| **0.100** |" in table


def test_device_reaches_the_fits_and_the_cpu_default_keeps_the_recorded_folders():
    from fewview.evaluation import settings_folder
    from fewview.methods.fit_config import SPARSE_PRESET, FitConfig

    for row in ("field", "sparsefusion"):
        assert bench.config(row, args(device="cuda")).device == "cuda"
    # a record scored before the option existed names its folders by the config hash without it
    old = FitConfig(**{**SPARSE_PRESET, "steps": 300, "upsample_step": 100})
    assert settings_folder("field", {}, bench.config("field", args())) == settings_folder("field", {}, old)


def test_set_overrides_follow_the_annotation_not_the_default():
    from dataclasses import dataclass

    @dataclass
    class Config:
        weight: float = 0  # an int literal for a float field
        name: str = "a"

    assert config_overrides(Config, ["weight=0.5", "name=b"]) == {"weight": 0.5, "name": "b"}
