"""Real processes killed with SIGKILL mid-run (during and between checkpoint writes) resume to the result of an
uninterrupted run, and a half-written checkpoint is never loaded."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fewview.checkpoint import find_checkpoint, save_checkpoint
from fewview.objects.builder import ObjectsConfig, build

from .helpers import make_cams, write_blender

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")


def during_write(out: Path) -> bool:
    return (out / "checkpoint.tmp").exists()


def between_writes(out: Path) -> bool:
    meta = out / "checkpoint" / "meta.json"
    try:
        return json.loads(meta.read_text())["step"] >= 3 and not (out / "checkpoint.tmp").exists()
    except (OSError, ValueError, KeyError):
        return False


def run_and_kill(cmd: list[str], out: Path, when, timeout: float = 120.0) -> bool:
    """Start ``cmd`` and SIGKILL it as soon as ``when(out)`` holds; True when the kill landed mid-run."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < timeout:
        if when(out):
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    return p.wait() == -signal.SIGKILL


def kill_twice_then_finish(cmd: list[str], out: Path) -> list[int]:
    """Kill during a checkpoint write, then between writes, then run to the end; the steps the kills left."""
    landed = []
    for when in (during_write, between_writes):
        assert run_and_kill([*cmd, "--out", str(out)], out, when), "the process ended before it could be killed"
        ck = find_checkpoint(out / "checkpoint")
        landed.append(json.loads((ck / "meta.json").read_text())["step"] if ck else 0)
    subprocess.run([*cmd, "--out", str(out)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return landed


def assert_same_tensors(a: Path, b: Path):
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], atol=1e-6, rtol=0)


def test_fit_killed_during_and_between_checkpoints_ends_as_an_uninterrupted_run(tmp_path):
    write_blender(tmp_path / "scene", make_cams(n=4, h=24, w=24, f=30.0), "train")
    cmd = [sys.executable, "-m", "fewview", "fit", str(tmp_path / "scene"), "--views", "0,1,2", "--steps", "40",
           "--batch-rays", "256", "--grid-res", "8", "--grid-res-final", "12", "--upsample-step", "3",
           "--occupancy-res", "16", "--occupancy-every", "2", "--occupancy-warmup", "1", "--checkpoint-every", "1",
           "--quiet"]  # fmt: skip
    subprocess.run([*cmd, "--out", str(tmp_path / "ref")], check=True, stdout=subprocess.DEVNULL)
    landed = kill_twice_then_finish(cmd, tmp_path / "killed")
    assert all(0 <= s < 40 for s in landed), landed
    meta = json.loads((tmp_path / "killed" / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 40
    assert_same_tensors(tmp_path / "ref/checkpoint/field.safetensors", tmp_path / "killed/checkpoint/field.safetensors")
    assert not (tmp_path / "killed" / "checkpoint.tmp").exists()


def test_train_killed_during_and_between_checkpoints_ends_as_an_uninterrupted_run(tmp_path):
    build(ObjectsConfig(objects=10, views=6, res=24, shard_size=4), tmp_path / "objects", progress=False)
    cmd = [sys.executable, "-m", "fewview", "train", "pixelnerf", "--data", str(tmp_path / "objects"), "--steps", "30",
           "--batch-size", "2", "--rays", "32", "--checkpoint-every", "1", "--eval-every", "0", "--warmup", "1",
           "--device", "cpu", "--quiet", "--model-widths", "8", "8", "--model-hidden", "16",
           "--model-samples-coarse", "6", "--model-samples-fine", "3"]  # fmt: skip
    subprocess.run([*cmd, "--out", str(tmp_path / "ref")], check=True, stdout=subprocess.DEVNULL)
    kill_twice_then_finish(cmd, tmp_path / "killed")
    for name in ("model", "ema"):
        assert_same_tensors(tmp_path / f"ref/checkpoint/{name}.safetensors",
                            tmp_path / f"killed/checkpoint/{name}.safetensors")  # fmt: skip
    assert_same_tensors(tmp_path / "ref/pretrained/model.safetensors", tmp_path / "killed/pretrained/model.safetensors")


def test_a_kill_between_the_renames_recovers_the_old_checkpoint_and_ignores_the_partial_one(tmp_path):
    ck = tmp_path / "checkpoint"
    save_checkpoint(ck, {"field": {"x": torch.arange(3.0)}}, {"step": 7})
    # the state save_checkpoint leaves when killed after moving the old folder aside: .old complete, .tmp partial
    shutil.move(str(ck), str(tmp_path / "checkpoint.old"))
    (tmp_path / "checkpoint.tmp").mkdir()
    save_file({"x": torch.full((3,), 99.0)}, str(tmp_path / "checkpoint.tmp" / "field.safetensors"))
    found = find_checkpoint(ck)
    assert found == ck and json.loads((ck / "meta.json").read_text())["step"] == 7
    assert torch.equal(load_file(ck / "field.safetensors")["x"], torch.arange(3.0))
    assert find_checkpoint(tmp_path / "nothing") is None
