"""The Real3D rows of benchmarks/real3d_train.py parse as `fewview train lrm` options and set what they name."""

import importlib.util
from pathlib import Path

from fewview.cli import build_parser, dataclass_from_args
from fewview.models.lrm import LRMConfig

_SCRIPT = Path(__file__).parents[1] / "benchmarks" / "real3d_train.py"
_spec = importlib.util.spec_from_file_location("real3d_train", _SCRIPT)
real3d_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real3d_train)


def row_config(row: str) -> LRMConfig:
    args = build_parser().parse_args(["train", "lrm", "--out", "x", *real3d_train.ROWS[row]])
    return dataclass_from_args(LRMConfig, args, prefix="model_")


def test_every_row_parses_and_differs_from_the_previous_by_what_it_adds():
    c = {row: row_config(row) for row in real3d_train.ROWS}
    assert not c["lrm-a"].self_training and not c["a-continued"].self_training
    assert c["input"].self_training and c["input"].w_semantic == 0 and c["input"].w_cycle_rgb == 0
    assert c["semantic-naive"].semantic_reduce == "mean" and c["semantic-naive"].w_semantic > 0
    assert c["semantic-max"].semantic_reduce == "max" and c["semantic-max"].w_cycle_rgb == 0
    e2e, sg, cur = c["cycle-e2e"], c["cycle-sg"], c["curriculum"]
    assert e2e.w_cycle_rgb > 0 and not e2e.cycle_stop_grad and not e2e.curriculum
    assert sg.cycle_stop_grad and not sg.curriculum
    assert cur.cycle_stop_grad and cur.curriculum and cur.single_view_source == LRMConfig().single_view_source
    assert c["pool"].single_view_source == "pool" and c["pool-curated"].single_view_source == "pool-curated"
    assert c["curriculum-alexnet"].semantic_encoder == LRMConfig().semantic_encoder == "alexnet"
    alex = {**vars(c["curriculum-alexnet"]), "semantic_encoder": "viewenc"}
    semantic_rows = ["semantic-naive", "semantic-max", "cycle-e2e", "cycle-sg", "curriculum", "pool", "pool-curated"]
    assert alex == vars(cur) and all(c[r].semantic_encoder == "viewenc" for r in semantic_rows)
