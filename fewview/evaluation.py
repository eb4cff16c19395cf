"""Evaluation owned by fewview: per-view metrics, means, angle bins, images and an HTML report.

Angle bins follow SparseFusion (Fig. 8): the angle between an evaluation camera's viewing direction
and the nearest input camera's, binned 0-15, 15-30, 30-45 and 45+ degrees.
"""

from __future__ import annotations

import html
import json
import math
import numbers
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .cameras import Cameras
from .metrics import format_metrics, image_metrics

ANGLE_BINS = ((0.0, 15.0), (15.0, 30.0), (30.0, 45.0), (45.0, 180.01))
BIN_NAMES = ("0-15", "15-30", "30-45", "45+")


def angle_to_nearest_input(eval_cams: Cameras, input_cams: Cameras) -> Tensor:
    """(N,) degrees between each evaluation camera's optical axis and the closest input camera's."""
    a = torch.nn.functional.normalize(eval_cams.R[:, :, 2].double(), dim=-1)
    b = torch.nn.functional.normalize(input_cams.R[:, :, 2].double(), dim=-1)
    cos = (a @ b.T).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos.max(dim=1).values))


def binned_means(values: dict[str, list], angles: Tensor) -> dict[str, dict]:
    """Means of each metric per angle bin (bins with no views are omitted)."""
    out = {}
    for (lo, hi), name in zip(ANGLE_BINS, BIN_NAMES, strict=True):
        sel = [i for i, a in enumerate(angles.tolist()) if lo <= a < hi]
        if not sel:
            continue
        out[name] = {"count": len(sel)}
        for k, v in values.items():
            vals = [v[i] for i in sel if v[i] is not None]
            if vals:
                out[name][k] = float(np.mean(vals))
    return out


def cached_figures(path: str | Path, score: Callable[..., dict], *args) -> dict:
    """The figures stored in ``path`` by an earlier run, else ``score(*args)``'s, stored there (benchmarks fill long
    tables over several runs this way)."""
    path = Path(path)
    if path.is_file():
        return json.loads(path.read_text())
    res = score(*args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    return res


def mean_metrics(per: list[dict]) -> dict:
    """Each metric of the scenes' ``means`` averaged over the scenes that have a number for it (NaN, None or a
    missing key is left out); a metric no scene has stays None. A note beside the numbers (``lpips_unavailable``
    of scenes scored without LPIPS weights) is kept as the first scene's."""
    out: dict = {}
    for k in dict.fromkeys(k for p in per for k in p["means"]):
        vals = [p["means"].get(k) for p in per]
        nums = [float(v) for v in vals if isinstance(v, numbers.Real) and not isinstance(v, bool) and v == v]
        notes = [v for v in vals if v is not None and not isinstance(v, numbers.Real)]
        out[k] = float(np.mean(nums)) if nums else (notes[0] if notes else None)
    return out


def pooled_bins(per: list[dict]) -> dict[str, dict]:
    """The scenes' ``binned`` figures pooled over views: each bin's metrics averaged with the scenes' view counts as
    weights (a bin no scene has is left out)."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(b for p in per for b in p.get("binned") or {}):
        cells = [p["binned"][name] for p in per if name in (p.get("binned") or {})]
        n = sum(c["count"] for c in cells)
        keys = [k for k in cells[0] if k != "count"]
        out[name] = {"count": n, **{k: float(sum(c["count"] * c[k] for c in cells) / n) for k in keys}}
    return out


def mean_figures(per: list[dict]) -> dict:
    """Means over scenes of ``cached_figures`` results (their ``means`` and ``seconds``), the angle bins pooled over
    the scenes' views, with the scenes kept."""
    return {"means": mean_metrics(per), "binned": pooled_bins(per),
            "seconds": float(np.mean([p["seconds"] for p in per])), "per_object": per, "scenes": len(per)}  # fmt: skip


def settings_folder(name: str, settings: dict, config=None) -> str:
    """``name@key=value...[@cfg=HASH]``: a folder name that keeps the figures of differently configured runs apart;
    ``config`` (a dataclass) adds a hash of all its fields, so a changed default is a new folder too."""
    parts = [name, *(f"@{k}={v}" for k, v in sorted(settings.items()))]
    if config is not None:
        import dataclasses
        import hashlib

        blob = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode()
        parts.append(f"@cfg={hashlib.sha1(blob).hexdigest()[:8]}")
    return "".join(parts).replace("/", "_")


def config_overrides(cls, items: list[str]) -> dict:
    """``FIELD=VALUE`` strings (a benchmark's ``--set``) as a dict for the dataclass ``cls``, each value converted to
    its field's annotated type; an unknown field, a value that does not convert or a bool other than
    true/false/yes/no/1/0 raises ``ValueError`` naming it."""
    import typing

    hints = typing.get_type_hints(cls)
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in cls.__dataclass_fields__:
            raise ValueError(f"--set {item}: {cls.__name__} has no field {key!r} (write FIELD=VALUE)")
        kind = hints[key]
        if kind is bool:
            flag = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(value.lower())
            if flag is None:
                raise ValueError(f"--set {item}: {key} takes true or false")
            out[key] = flag
        elif kind in (int, float, str):
            try:
                out[key] = kind(value)
            except ValueError:
                raise ValueError(f"--set {item}: {key} takes a {kind.__name__}") from None
        else:
            name = getattr(kind, "__name__", str(kind))
            raise ValueError(f"--set {item}: {key} is a {name}; only bool, int, float and str fields")
    return out


def to_uint8(img: Tensor) -> np.ndarray:
    """(3, H, W) or (1, H, W) float image in [0, 1] -> (H, W, 3) uint8."""
    a = img.detach().float().clamp(0, 1).cpu()
    if a.shape[0] == 1:
        a = a.expand(3, -1, -1)
    return (a.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def colorize_depth(depth: Tensor, opacity: Tensor | None = None) -> Tensor:
    """(1, H, W) depth -> (3, H, W) image (near bright, far dark, empty black)."""
    d = depth[0]
    valid = d > 0 if opacity is None else (opacity[0] > 0.5) & (d > 0)
    if not bool(valid.any()):
        return torch.zeros(3, *d.shape)
    lo, hi = d[valid].min(), d[valid].max()
    n = ((hi - d) / (hi - lo).clamp_min(1e-6)).clamp(0, 1) * valid
    return torch.stack([n, n**0.7 * 0.8, (1 - n) * valid * 0.6 + 0.4 * n])


def evaluate_views(
    render: Callable[[Cameras], dict[str, Tensor]],
    cams: Cameras,
    gt: Tensor,
    input_cams: Cameras,
    masks: Tensor | None = None,
    out_dir: str | Path | None = None,
    names: list[str] | None = None,
    lpips: bool = True,
    progress: bool = False,
    lpips_weights: str | Path | None = None,
) -> dict:
    """Render every evaluation camera, score it against ``gt`` (N, 3, H, W, on the protocol's
    background) and, with ``out_dir``, save prediction/depth PNGs.

    Returns a dict with ``per_view`` (lists), ``means``, ``binned`` and ``angles``.
    """
    from tqdm import tqdm

    preds, depths = [], []
    for i in tqdm(range(len(cams)), desc="render", disable=not progress):
        r = render(cams[i])
        preds.append(r["rgb"])
        depths.append(colorize_depth(r["depth"], r["opacity"]))
    pred = torch.stack(preds)
    per_view = image_metrics(pred, gt.float(), masks, lpips=lpips, lpips_weights=lpips_weights)
    unavailable = per_view.pop("lpips_unavailable", None)
    if per_view.get("lpips_alex") is None:
        per_view.pop("lpips_alex", None)
    angles = angle_to_nearest_input(cams, input_cams)
    means = {k: float(np.mean(v)) for k, v in per_view.items()}
    if unavailable:
        means["lpips_alex"] = None
        means["lpips_unavailable"] = unavailable
    names = names or [f"view_{i:03d}" for i in range(len(cams))]
    if out_dir is not None:
        d = Path(out_dir)
        (d / "renders").mkdir(parents=True, exist_ok=True)
        for i, n in enumerate(names):
            Image.fromarray(to_uint8(pred[i])).save(d / "renders" / f"{n}_pred.png")
            Image.fromarray(to_uint8(gt[i])).save(d / "renders" / f"{n}_gt.png")
            Image.fromarray(to_uint8(depths[i])).save(d / "renders" / f"{n}_depth.png")
    return {
        "per_view": {"name": names, "angle_deg": angles.tolist(), **per_view},
        "means": means,
        "binned": binned_means(per_view, angles),
        "summary": format_metrics(means),
    }


# ----------------------------------------------------------------------- report
def _svg_scatter(x: list[float], y: list[float], xlabel: str, ylabel: str, w: int = 420, h: int = 260) -> str:
    if not x:
        return ""
    x0, x1 = 0.0, max(60.0, max(x) * 1.05)
    y0, y1 = min(y) - 1, max(y) + 1
    px = lambda v: 50 + (v - x0) / (x1 - x0) * (w - 70)  # noqa: E731
    py = lambda v: h - 40 - (v - y0) / (y1 - y0) * (h - 60)  # noqa: E731
    pts = "".join(
        f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3" fill="#2a6fdb"/>' for a, b in zip(x, y, strict=True)
    )
    ticks = "".join(
        f'<line x1="{px(t):.1f}" y1="{h - 40}" x2="{px(t):.1f}" y2="{h - 35}" stroke="#333"/>'
        f'<text x="{px(t):.1f}" y="{h - 22}" font-size="11" text-anchor="middle">{t:g}</text>'
        for t in (0, 15, 30, 45, 60, 90, 120, 180)
        if t <= x1
    )
    yt = "".join(
        f'<text x="44" y="{py(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.1f}</text>'
        for v in np.linspace(y0, y1, 5)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">'
        f'<rect width="{w}" height="{h}" fill="white"/>'
        f'<line x1="50" y1="{h - 40}" x2="{w - 20}" y2="{h - 40}" stroke="#333"/>'
        f'<line x1="50" y1="20" x2="50" y2="{h - 40}" stroke="#333"/>{ticks}{yt}{pts}'
        f'<text x="{w / 2}" y="{h - 5}" font-size="12" text-anchor="middle">{html.escape(xlabel)}</text>'
        f'<text x="12" y="{h / 2}" font-size="12" transform="rotate(-90 12 {h / 2})" text-anchor="middle">'
        f"{html.escape(ylabel)}</text></svg>"
    )


def write_report(out_dir: str | Path, result: dict, title: str, input_images: list[str], meta: dict) -> Path:
    """An HTML page: settings, means, binned means, a PSNR-vs-angle plot and a grid of
    inputs | prediction | ground truth | depth for every evaluation view. Images are referenced
    relative to ``out_dir``."""
    d = Path(out_dir)
    pv = result["per_view"]
    metric_keys = [k for k in ("psnr", "ssim", "lpips_alex", "psnr_masked", "ssim_masked") if k in pv]
    rows = []
    for i, n in enumerate(pv["name"]):
        cells = "".join(f"<td>{pv[k][i]:.4f}</td>" for k in metric_keys)
        rows.append(
            f"<tr><td>{html.escape(n)}</td><td>{pv['angle_deg'][i]:.1f}</td>{cells}"
            f'<td><img src="renders/{n}_pred.png"></td><td><img src="renders/{n}_gt.png"></td>'
            f'<td><img src="renders/{n}_depth.png"></td></tr>'
        )
    binned = "".join(
        f"<tr><td>{b}</td><td>{v['count']}</td>"
        + "".join(f"<td>{v[k]:.4f}</td>" if k in v else "<td>-</td>" for k in metric_keys)
        + "</tr>"
        for b, v in result["binned"].items()
    )
    head = "".join(f"<th>{k}</th>" for k in metric_keys)
    inputs = "".join(f'<img src="{html.escape(p)}">' for p in input_images)
    plot = _svg_scatter(pv["angle_deg"], pv["psnr"], "angle to nearest input view (deg)", "PSNR (dB)")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:24px}} img{{image-rendering:pixelated;width:160px}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p><b>{html.escape(result["summary"])}</b></p>
<pre>{html.escape(json.dumps(meta, indent=1, default=str))}</pre>
<h2>Inputs</h2><div>{inputs}</div>
<h2>By angle to the nearest input view</h2>
<table><tr><th>bin</th><th>views</th>{head}</tr>{binned}</table>
<div>{plot}</div>
<h2>Views</h2>
<table><tr><th>view</th><th>angle</th>{head}<th>prediction</th><th>ground truth</th><th>depth</th></tr>
{"".join(rows)}</table></body></html>"""
    path = d / "report.html"
    path.write_text(page)
    return path


def write_comparison(out_dir: str | Path, runs: dict[str, str], title: str, max_views: int = 6) -> Path:
    """``report.html`` and ``comparison.png`` in ``out_dir`` comparing protocol runs (``{method: run subfolder}``,
    each with ``metrics.json`` and ``renders/``) on the same views: a table of means, then per view the inputs,
    every method's render with its PSNR, and the ground truth. The picture holds the first ``max_views`` views:
    one row per method, the ground truth last."""
    d = Path(out_dir)
    recs = {m: json.loads((d / sub / "metrics.json").read_text()) for m, sub in runs.items()}
    first = next(iter(runs.values()))
    names = recs[next(iter(recs))]["evaluation_names"]
    inputs = sorted(p.relative_to(d).as_posix() for p in (d / first / "renders").glob("input_*.png"))
    keys = [k for k in ("psnr", "ssim", "lpips_alex") if any(r["means"].get(k) is not None for r in recs.values())]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    means = "".join(f"<tr><td>{html.escape(m)}</td>" + "".join(f"<td>{fmt(r['means'].get(k))}</td>" for k in keys)
                    + f"<td>{r.get('fit_seconds', float('nan')):.0f}</td></tr>" for m, r in recs.items())  # fmt: skip
    rows = []
    for i, n in enumerate(names):
        cells = "".join(f'<td><img src="{runs[m]}/renders/{n}_pred.png"><br>{r["per_view"]["psnr"][i]:.2f} dB</td>'
                        for m, r in recs.items())  # fmt: skip
        rows.append(f'<tr><td>{html.escape(n)}</td>{cells}<td><img src="{first}/renders/{n}_gt.png"></td></tr>')
    head = "".join(f"<th>{html.escape(m)}</th>" for m in recs)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:24px}} img{{image-rendering:pixelated;width:160px}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;text-align:center}}</style></head><body>
<h1>{html.escape(title)}</h1>
<table><tr><th>method</th>{"".join(f"<th>{k}</th>" for k in keys)}<th>seconds</th></tr>{means}</table>
<p>Each method's own report: {", ".join(f'<a href="{s}/report.html">{html.escape(m)}</a>' for m, s in runs.items())}</p>
<h2>Inputs</h2><div>{"".join(f'<img src="{html.escape(p)}">' for p in inputs)}</div>
<h2>Held-out views</h2><table><tr><th>view</th>{head}<th>ground truth</th></tr>{"".join(rows)}</table>
</body></html>"""
    (d / "report.html").write_text(page)
    load = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
    shown = names[:max_views]
    grid = [np.concatenate([load(d / runs[m] / "renders" / f"{n}_pred.png") for n in shown], 1) for m in runs]
    grid.append(np.concatenate([load(d / first / "renders" / f"{n}_gt.png") for n in shown], 1))
    lp = lambda r: "" if r["means"].get("lpips_alex") is None else f"\nLPIPS {r['means']['lpips_alex']:.3f}"  # noqa: E731
    labels = [f"{m}\n{r['means']['psnr']:.2f} dB{lp(r)}" for m, r in recs.items()] + ["ground truth"]
    if inputs:
        row = np.concatenate([load(d / p) for p in inputs], 1)
        pad = np.full((row.shape[0], grid[0].shape[1], 3), 255, np.uint8)
        pad[:, : min(row.shape[1], pad.shape[1])] = row[:, : pad.shape[1]]
        grid.insert(0, pad)
        labels.insert(0, f"{len(inputs)} inputs")
    _labelled_grid(grid, labels, title).save(d / "comparison.png")
    return d / "report.html"


def _labelled_grid(rows: list[np.ndarray], labels: list[str], title: str, scale: int = 2, margin: int = 130):
    """Rows of images stacked, enlarged ``scale``× (nearest), each with its label on the left, the title above."""
    from PIL import ImageDraw

    h = sum(r.shape[0] for r in rows) * scale
    w = rows[0].shape[1] * scale
    canvas = Image.new("RGB", (margin + w, h + 24), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 6), title, fill="black")
    y = 24
    for r, label in zip(rows, labels, strict=True):
        im = Image.fromarray(r).resize((r.shape[1] * scale, r.shape[0] * scale), Image.NEAREST)
        canvas.paste(im, (margin, y))
        draw.multiline_text((6, y + 6), label, fill="black", spacing=4)
        y += im.height
    return canvas


def nan_to_none(x):
    """JSON-safe copy (NaN/Inf become None)."""
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [nan_to_none(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
