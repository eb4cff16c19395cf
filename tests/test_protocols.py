"""View-selection protocols: the published rules, seeded and reproducible."""

import numpy as np
import pytest
import torch

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
    assert len(frames) == 32 and frames[0] == 0 and frames[-1] == 201
    assert frames == sorted(frames)
    expected = torch.randperm(32, generator=torch.Generator().manual_seed(5))[:2].tolist()
    assert list(split.inputs) == expected
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
    assert get_protocol("lego-8view")(100).inputs == (26, 86, 2, 55, 75, 93, 16, 73)
    assert len(get_protocol("lego-dense")(100).inputs) == 100
    seeded = blender_views(100, 5, seed=3)
    assert seeded == blender_views(100, 5, seed=3) and len(set(seeded.inputs)) == 5
    with pytest.raises(KeyError, match="unknown protocol"):
        get_protocol("nope")


def test_objects_protocol_seeded_by_object_index():
    a, b = objects_views(0, 2), objects_views(1, 2)
    assert a.inputs != b.inputs and len(a.evaluation) == 30
    assert get_protocol("objects-3view")(7).inputs == objects_views(7, 3).inputs


def test_split_never_evaluates_inputs():
    from fewview.data import ViewSplit

    with pytest.raises(ValueError, match="overlap"):
        ViewSplit("x", (1, 2), (2, 3))
