"""View-selection protocols: the published rules, seeded and reproducible."""

import numpy as np
import pytest

from fewview.data import get_protocol
from fewview.data.protocols import (
    DTU_EXCLUDED_IDS,
    blender_views,
    ipsm_dtu,
    ipsm_llff,
    objects_views,
    sparsefusion_co3d,
)


def test_sparsefusion_co3d():
    frames, split = sparsefusion_co3d(202, k=2, seed=5)
    # linspace(0, 201, 32) rounded: steps of 201 / 31 = 6.484
    assert frames == [0, 6, 13, 19, 26, 32, 39, 45, 52, 58, 65, 71, 78, 84, 91, 97, 104, 110, 117, 123, 130, 136,
                      143, 149, 156, 162, 169, 175, 182, 188, 195, 201]  # fmt: skip
    # torch.randperm(32) seeded with 5 starts 3, 17, 9 (the shipped example object, index 5, records the same inputs)
    assert split.inputs == (3, 17)
    assert sorted(split.inputs + split.evaluation) == list(range(32)) and len(split.evaluation) == 30
    assert sparsefusion_co3d(202, 2, seed=5) == (frames, split)
    assert sparsefusion_co3d(202, 2, seed=6)[1].inputs != split.inputs


def test_ipsm_llff_matches_rule():
    split = ipsm_llff(69, k=3)
    assert split.evaluation == tuple(range(0, 69, 8))
    rest = [i for i in range(69) if i % 8]
    assert split.inputs == tuple(rest[round(x)] for x in np.linspace(0, len(rest) - 1, 3))
    assert split.inputs == (1, 35, 68)
    assert get_protocol("llff-3view")(69) == split


def test_ipsm_dtu():
    split = ipsm_dtu(49, k=3)
    assert split.inputs == (25, 22, 28)
    assert not set(split.evaluation) & (set(DTU_EXCLUDED_IDS) | {25, 22, 28, 40, 44, 48, 0, 8, 13})
    assert len(split.evaluation) == 49 - 15 - 9


def test_blender_and_named_protocols():
    s3 = get_protocol("lego-3view")(100)
    assert s3.protocol == "lego-3view" and s3.inputs == (26, 86, 2) and s3.evaluation == tuple(range(25))
    assert (s3.input_split, s3.eval_split) == ("train", "test")
    val = get_protocol("lego-3view-val")(100)
    assert (val.inputs, val.evaluation, val.eval_split) == ((26, 86, 2), tuple(range(25)), "val")
    assert get_protocol("lego-8view")(100).inputs == (26, 86, 2, 55, 75, 93, 16, 73)
    assert len(get_protocol("lego-dense")(100).inputs) == 100
    seeded = blender_views(100, 5, seed=3)
    assert seeded == blender_views(100, 5, seed=3) and len(set(seeded.inputs)) == 5
    with pytest.raises(KeyError, match="unknown protocol"):
        get_protocol("nope")


def test_objects_protocol_seeded_by_object_index():
    a, b = objects_views(0, 2), objects_views(1, 2)
    assert (a.inputs, b.inputs) == ((12, 31), (5, 26)) and len(a.evaluation) == 30
    assert objects_views(5, 3).inputs == (3, 17, 9)
    assert get_protocol("objects-3view")(7).inputs == objects_views(7, 3).inputs


def test_split_never_evaluates_inputs():
    from fewview.data import ViewSplit

    with pytest.raises(ValueError, match="overlap"):
        ViewSplit("x", (1, 2), (2, 3))
