"""The 3DGS point-cloud PLY that Gaussian viewers read (binary little-endian float32 vertices with
x, y, z, nx, ny, nz, f_dc_0..2, f_rest_*, opacity (logit), scale_0..2 (log), rot_0..3 (w, x, y, z))."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import DataError
from .model import GaussianModel


def _names(n_rest: int) -> list[str]:
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def save_ply(model: GaussianModel, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = {k: v.detach().cpu().float() for k, v in model.tensors().items()}
    n = len(t["means"])
    rest = t["sh_rest"].transpose(1, 2).reshape(n, -1)  # channel-major, as the reference code writes it
    cols = [t["means"], torch.zeros(n, 3), t["sh_dc"].reshape(n, 3), rest, t["opacity_logits"][:, None],
            t["log_scales"], t["quats"]]  # fmt: skip
    data = torch.cat(cols, 1).numpy().astype("<f4")
    names = _names(rest.shape[1])
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n"
    header += "".join(f"property float {p}\n" for p in names) + "end_header\n"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(np.ascontiguousarray(data).tobytes())
    tmp.replace(path)
    return path


_PLY_TYPES = {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1", "uint8": "u1",
              "int": "i4", "int32": "i4", "uint": "u4", "short": "i2", "ushort": "u2", "char": "i1"}  # fmt: skip


def load_ply(path: str | Path) -> GaussianModel:
    """Read a 3DGS PLY (binary little-endian, any extra vertex properties ignored)."""
    path = Path(path)
    raw = path.read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply") or end < 0:
        raise DataError(path, "header", "not a PLY file")
    lines = raw[:end].decode("ascii", "replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise DataError(path, "format", "only binary_little_endian PLY is supported")
    n, props, in_vertex = 0, [], False
    for ln in lines:
        parts = ln.split()
        if parts[:1] == ["element"]:
            in_vertex = parts[1] == "vertex"
            if in_vertex:
                n = int(parts[2])
            elif props:
                break
        elif parts[:1] == ["property"] and in_vertex:
            if parts[1] == "list":
                raise DataError(path, "vertex", "list properties are not 3DGS vertices")
            props.append((parts[2], "<" + _PLY_TYPES[parts[1]]))
    names = [p for p, _ in props]
    need = [p for p in _names(0) if p not in ("nx", "ny", "nz")]
    missing = [p for p in need if p not in names]
    if missing:
        raise DataError(path, "vertex", f"missing 3DGS properties {missing}")
    arr = np.frombuffer(raw, dtype=np.dtype(props), count=n, offset=end + len(b"end_header\n"))
    col = lambda *ks: torch.from_numpy(np.stack([arr[k].astype(np.float32) for k in ks], 1))  # noqa: E731
    n_rest = sum(1 for p in names if p.startswith("f_rest_"))
    if n_rest % 3 or int(round((n_rest // 3 + 1) ** 0.5)) ** 2 != n_rest // 3 + 1:
        raise DataError(path, "f_rest", f"{n_rest} coefficients is not 3 x ((d+1)^2 - 1)")
    rest = col(*[f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, n_rest // 3).transpose(1, 2)
    return GaussianModel(
        col("x", "y", "z"),
        col("scale_0", "scale_1", "scale_2"),
        col("rot_0", "rot_1", "rot_2", "rot_3"),
        col("opacity")[:, 0],
        col("f_dc_0", "f_dc_1", "f_dc_2")[:, None],
        rest.contiguous(),
        int(round((n_rest // 3 + 1) ** 0.5)) - 1,
    )
