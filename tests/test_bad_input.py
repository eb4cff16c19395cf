"""Every bad-input case gives a one-line error naming the file and the field, and writes nothing."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fewview.data import DataError, load_blender, load_co3d_sequence, load_colmap, load_dtu, load_llff
from fewview.data.protocols import blender_views, ipsm_dtu, ipsm_llff, objects_views, sparsefusion_co3d

from .helpers import make_cams, save_png, write_blender, write_co3d, write_colmap, write_dtu, write_llff


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def blender(tmp_path):
    write_blender(tmp_path, make_cams(n=3), "train")
    path = tmp_path / "transforms_train.json"
    return path, json.loads(path.read_text())


def test_malformed_json(tmp_path):
    path, _ = blender(tmp_path)
    path.write_text('{"camera_angle_x": 0.7, "frames": [}')
    with pytest.raises(DataError) as e:
        load_blender(tmp_path, "train")
    assert "transforms_train.json" in one_line(e) and "invalid JSON at line 1 column" in one_line(e)


def test_missing_image(tmp_path):
    path, meta = blender(tmp_path)
    (tmp_path / "train" / "r_1.png").unlink()
    with pytest.raises(DataError) as e:
        load_blender(tmp_path, "train")
    assert "transforms_train.json: frames[1].file_path: image file not found" in one_line(e)


def test_missing_field(tmp_path):
    path, meta = blender(tmp_path)
    del meta["frames"][2]["transform_matrix"]
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError) as e:
        load_blender(tmp_path, "train")
    assert "frames[2].transform_matrix: missing" in one_line(e)


def test_image_size_disagrees_with_intrinsics_nerfstudio(tmp_path):
    write_blender(tmp_path, make_cams(n=3), nerfstudio=True)
    path = tmp_path / "transforms.json"
    meta = json.loads(path.read_text())
    meta["frames"][1]["w"] = 64
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError) as e:
        load_blender(tmp_path, None)
    assert "transforms.json: frames[1].w/h: image r_1.png is 48x40 but intrinsics say 64x40" in one_line(e)


def test_image_size_disagrees_with_intrinsics_llff(tmp_path):
    write_llff(tmp_path, make_cams(n=3))
    pb = np.load(tmp_path / "poses_bounds.npy")
    pb[:, 4] = 33  # H in the hwf column: no longer a uniform rescale of 48x40
    np.save(tmp_path / "poses_bounds.npy", pb)
    with pytest.raises(DataError) as e:
        load_llff(tmp_path)
    assert "poses_bounds.npy: row 0 hwf: images are 48x40 but the poses say 48x33" in one_line(e)


def test_image_size_disagrees_with_intrinsics_colmap(tmp_path):
    write_colmap(tmp_path, make_cams(n=3), binary=False)
    txt = tmp_path / "sparse" / "0" / "cameras.txt"
    txt.write_text(txt.read_text().replace("PINHOLE 48 40", "PINHOLE 50 40", 1))
    with pytest.raises(DataError) as e:
        load_colmap(tmp_path)
    assert "camera 1.width/height: image frame_000.png is 48x40, camera says 50x40" in one_line(e)


def test_image_size_disagrees_with_annotation_co3d(tmp_path):
    write_co3d(tmp_path, make_cams(n=3))
    import gzip

    path = tmp_path / "hydrant" / "frame_annotations.jgz"
    frames = json.loads(gzip.decompress(path.read_bytes()))
    frames[0]["image"]["size"] = [41, 48]
    path.write_bytes(gzip.compress(json.dumps(frames).encode()))
    with pytest.raises(DataError) as e:
        load_co3d_sequence(tmp_path, "hydrant", "42_1234_5678")
    assert "frame_annotations.jgz: frame 3.image.size: image is 48x40, annotation says 48x41" in one_line(e)


def test_non_orthonormal_rotation(tmp_path):
    path, meta = blender(tmp_path)
    m = np.array(meta["frames"][1]["transform_matrix"])
    m[:3, :3] *= 1.3
    meta["frames"][1]["transform_matrix"] = m.tolist()
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError) as e:
        load_blender(tmp_path, "train")
    assert "transforms_train.json: frames[1]: rotation is not orthonormal" in one_line(e)


def test_singular_projection_dtu(tmp_path):
    write_dtu(tmp_path, make_cams(n=3))
    npz = dict(np.load(tmp_path / "cameras.npz"))
    npz["world_mat_1"] = npz["world_mat_1"].copy()
    npz["world_mat_1"][2, :3] *= 0.0  # third row of P zero: the 3x3 block is singular
    np.savez(tmp_path / "cameras.npz", **npz)
    with pytest.raises(DataError) as e:
        load_dtu(tmp_path)
    assert "cameras.npz: world_mat: projection[1]: left 3x3 block is singular" in one_line(e)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_inf_in_pose(tmp_path, value):
    path, meta = blender(tmp_path)
    meta["frames"][0]["transform_matrix"][1][3] = value
    # Python's json writes NaN/Infinity literals, which json.loads reads back.
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError) as e:
        load_blender(tmp_path, "train")
    assert "transforms_train.json: frames[0].transform_matrix: contains NaN or Inf" in one_line(e)


def test_nan_in_llff_pose(tmp_path):
    write_llff(tmp_path, make_cams(n=3))
    pb = np.load(tmp_path / "poses_bounds.npy")
    pb[2, 3] = np.nan
    np.save(tmp_path / "poses_bounds.npy", pb)
    with pytest.raises(DataError) as e:
        load_llff(tmp_path)
    assert "poses_bounds.npy: row 2: contains NaN or Inf" in one_line(e)


def test_fewer_views_than_protocol_needs():
    with pytest.raises(DataError) as e:
        ipsm_llff(3, k=3)
    assert one_line(e) == "protocol llff: views: needs at least 3 non-test images, the scene has 2"
    with pytest.raises(DataError, match="needs at least 32 frames, the scene has 20"):
        sparsefusion_co3d(20, k=2)
    with pytest.raises(DataError, match="needs at least 49 images"):
        ipsm_dtu(30, k=3)
    with pytest.raises(DataError, match="needs at least 87 train views"):
        blender_views(50, 3)
    with pytest.raises(DataError, match="needs at least 4 views"):
        objects_views(0, 3, n_views=3)


def test_mask_image_count_mismatch(tmp_path):
    write_llff(tmp_path, make_cams(n=4))
    (tmp_path / "masks" / "IMG_0002.png").unlink()
    with pytest.raises(DataError) as e:
        load_llff(tmp_path)
    assert one_line(e).endswith("masks: masks: 3 mask files (3 matching image names) for 4 images")


def test_mask_image_count_mismatch_dtu(tmp_path):
    write_dtu(tmp_path, make_cams(n=4))
    save_png(tmp_path / "mask" / "999.png", np.zeros((40, 48), dtype=np.uint8))
    with pytest.raises(DataError) as e:
        load_dtu(tmp_path)
    assert one_line(e).endswith("mask: masks: 5 masks for 4 images")


def test_cli_reports_one_line_and_writes_nothing(tmp_path):
    path, _ = blender(tmp_path / "scene")
    path.write_text("{not json")
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "fewview.cli", "info", str(tmp_path / "scene")],
        cwd=work, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "transforms_train.json" in r.stderr and "invalid JSON" in r.stderr
    assert "Traceback" not in r.stderr
    assert list(work.iterdir()) == []


def test_a_folder_of_runs_names_them(tmp_path, capsys):
    """`fewview export fewview-demo` (a folder holding the demo's two runs, not a run) says which runs to choose."""
    from fewview.cli import main

    for run in ("no-prior", "sparsefusion"):
        (tmp_path / run / "checkpoint").mkdir(parents=True)
    assert main(["export", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-prior, sparsefusion" in err and str(tmp_path / "sparsefusion") in err
