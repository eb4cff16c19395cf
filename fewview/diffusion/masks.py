"""Inpainting masks (1 = unknown, to be generated): half-image, random boxes, and the depth-warping masks
IPSM derives by inverse-warping a seen view into a pseudo view."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pixel_grid(h: int, w: int, device=None) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates (u, v), each (H, W), in fewview's convention (centres at +0.5)."""
    v, u = torch.meshgrid(torch.arange(h, device=device) + 0.5, torch.arange(w, device=device) + 0.5, indexing="ij")
    return u, v


def reproject(target_depth: Tensor, target_c2w: Tensor, target_K: Tensor, source_c2w: Tensor,
              source_K: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Back-project every target pixel through its z-depth and project it into the source camera (OpenCV,
    z-depth). Returns ((u, v) source pixel coordinates (B,H,W,2), z in the source camera (B,H,W), and
    whether the point lies in front of it with target depth > 0 (B,H,W)); float64."""
    b, _, h, w = target_depth.shape
    dt = target_depth[:, 0].to(torch.float64)
    u, v = pixel_grid(h, w, dt.device)
    pix = torch.stack([u, v, torch.ones_like(u)], -1).to(torch.float64)  # (H,W,3)
    rays = torch.einsum("bij,hwj->bhwi", torch.linalg.inv(target_K.double()), pix)
    pts = rays * dt[..., None]
    world = (
        torch.einsum("bij,bhwj->bhwi", target_c2w[:, :3, :3].double(), pts) + target_c2w[:, None, None, :3, 3].double()
    )
    w2c = torch.linalg.inv(source_c2w.double())
    cam = torch.einsum("bij,bhwj->bhwi", w2c[:, :3, :3], world) + w2c[:, None, None, :3, 3]
    z = cam[..., 2]
    proj = torch.einsum("bij,bhwj->bhwi", source_K.double(), cam)
    uv = proj[..., :2] / z.clamp_min(1e-9)[..., None]
    return uv, z, (dt > 0) & (z > 1e-6)


def _nearest(img: Tensor, uv: Tensor, ok: Tensor) -> tuple[Tensor, Tensor]:
    """Sample (B,C,Hs,Ws) at the pixels containing ``uv`` (nearest); (values (B,C,H,W), inside (B,H,W))."""
    b, c, hs, ws = img.shape
    iu, iv = torch.floor(uv[..., 0]).long(), torch.floor(uv[..., 1]).long()
    inside = ok & (iu >= 0) & (iu < ws) & (iv >= 0) & (iv < hs)
    flat = (iv.clamp(0, hs - 1) * ws + iu.clamp(0, ws - 1)).reshape(b, 1, -1)
    out = img.reshape(b, c, -1).gather(2, flat.expand(-1, c, -1)).reshape(b, c, *uv.shape[1:3])
    return out, inside


def inverse_warp(target_depth: Tensor, target_c2w: Tensor, target_K: Tensor, source_image: Tensor,
                 source_depth: Tensor, source_c2w: Tensor, source_K: Tensor,
                 rel_tol: float = 0.05) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Warp ``source_image`` into the target view through the target's depth (IPSM's inline prior).

    Each target pixel with depth > 0 is back-projected, projected into the source (OpenCV cameras, z-depth)
    and reads the source pixel it lands in. It is valid when it lands inside the source image on a surface
    whose depth agrees within ``rel_tol`` (relative), i.e. the point is seen by the source view.
    Shapes: depths (B,1,H,W), images (B,C,Hs,Ws), c2w (B,4,4), K (B,3,3). Returns (warped (B,C,H,W), valid).
    """
    uv, z, ok = reproject(target_depth, target_c2w, target_K, source_c2w, source_K)
    ds, inside = _nearest(source_depth.double(), uv, ok)
    ds = ds[:, 0]
    valid = inside & (ds > 0) & ((z - ds).abs() < rel_tol * z)
    warped, _ = _nearest(source_image, uv, ok)
    valid = valid[:, None]
    return warped * valid.to(warped.dtype), valid


def minmax_normalise(d: Tensor, where: Tensor) -> Tensor:
    """Per image, (d - min) / (max - min) over the pixels ``where`` (B,1,H,W); 0 elsewhere."""
    big = torch.finfo(d.dtype).max
    lo = torch.where(where, d, torch.full_like(d, big)).flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = torch.where(where, d, torch.full_like(d, -big)).flatten(1).max(1).values.view(-1, 1, 1, 1)
    return torch.where(where, (d - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(d))


def ipsm_warp(target_depth: Tensor, target_c2w: Tensor, target_K: Tensor, source_image: Tensor,
              source_depth: Tensor, source_c2w: Tensor, source_K: Tensor, thresholds: tuple[float, ...] = (0.3, 0.1),
              test: str = "minmax", rel_tol: float = 0.05) -> tuple[Tensor, Tensor, list[Tensor]]:  # fmt: skip
    """IPSM's inline prior: the source image and the source's rendered depth inverse-warped into the target
    (pseudo) view through the target's rendered depth, with one validity mask per threshold.

    ``test="minmax"`` (IPSM's code): |norm(warped source depth) - norm(target depth)| < threshold, each depth
    min-max normalised over its image's surface pixels (depth > 0). ``test="relative"``: fewview's
    geometric test, the reprojected point's depth within ``rel_tol`` of the source depth (thresholds unused).
    Target pixels with no surface (depth 0) are never valid. Returns (warped image (B,C,H,W) zero where
    nothing lands, warped source depth (B,1,H,W), [valid (B,1,H,W) bool per threshold])."""
    uv, z, ok = reproject(target_depth, target_c2w, target_K, source_c2w, source_K)
    ds, inside = _nearest(source_depth.double(), uv, ok)
    warped, _ = _nearest(source_image, uv, ok)
    base = inside[:, None] & (ds > 0)
    if test == "minmax":
        dt = target_depth.double()
        diff = (minmax_normalise(ds, ds > 0) - minmax_normalise(dt, dt > 0)).abs()
        masks = [base & (diff < thr) for thr in thresholds]
    elif test == "relative":
        rel = base & ((z[:, None] - ds).abs() < rel_tol * z[:, None])
        masks = [rel for _ in thresholds]
    else:
        raise ValueError(f"unknown warp test {test!r}: choose minmax or relative")
    return warped * base.to(warped.dtype), ds.to(source_depth.dtype), masks


def halves(h: int, w: int) -> Tensor:
    """The four half-image masks (4,1,H,W): left, right, top, bottom unknown."""
    u, v = pixel_grid(h, w)
    return torch.stack([u < w / 2, u >= w / 2, v < h / 2, v >= h / 2])[:, None].float()


def half_mask(b: int, h: int, w: int, generator: torch.Generator | None = None) -> Tensor:
    """One random half (left, right, top or bottom) unknown per item."""
    return halves(h, w)[torch.randint(0, 4, (b,), generator=generator)]


def box_mask(b: int, h: int, w: int, generator: torch.Generator | None = None, boxes: int = 3) -> Tensor:
    """The union of 1..``boxes`` random boxes, each 20-60 % of the image side."""
    m = torch.zeros(b, 1, h, w)
    n = torch.randint(1, boxes + 1, (b,), generator=generator)
    r = torch.rand(b, boxes, 4, generator=generator)
    for i in range(b):
        for k in range(int(n[i])):
            bh, bw = int(h * (0.2 + 0.4 * r[i, k, 0])), int(w * (0.2 + 0.4 * r[i, k, 1]))
            y0, x0 = int((h - bh) * r[i, k, 2]), int((w - bw) * r[i, k, 3])
            m[i, :, y0 : y0 + bh, x0 : x0 + bw] = 1
    return m


def warp_mask(batch, background_known: Tensor | None = None, rel_tol: float = 0.05) -> Tensor:
    """IPSM-style masks for a training batch with depth: the query pixels that context view 0 does not see.
    The query's background is unknown too (a pseudo view's empty pixels have no warped colour either), except
    for the items flagged in ``background_known`` (B,) bool."""
    if batch.query_depth is None or batch.context_depth is None:
        raise ValueError("warp masks need depth maps: open the source with depth=True")
    _, valid = inverse_warp(batch.query_depth, batch.query_c2w, batch.query_K, batch.context[:, 0],
                            batch.context_depth[:, 0], batch.context_c2w[:, 0], batch.context_K[:, 0])  # fmt: skip
    unknown = (~valid).float()
    bg = (batch.query_depth <= 0).float()
    if background_known is None:
        return unknown
    keep_bg = background_known.to(unknown).reshape(-1, 1, 1, 1)
    return unknown * (1 - bg * keep_bg)


MASK_KINDS = ("warp", "half", "box", "full")


def training_masks(batch, probs: tuple[float, ...], generators: list[torch.Generator],
                   background_unknown: float = 0.7) -> Tensor:  # fmt: skip
    """Per item, a mask of kind warp / half / box / full drawn with probabilities ``probs`` (B,1,H,W). Each item
    draws from its own generator, the same draws whatever the other items are. Warp masks leave the query's
    background unknown with probability ``background_unknown``."""
    b, _, h, w = batch.query.shape
    p = torch.tensor(probs, dtype=torch.float64)
    draws = [(int(torch.multinomial(p / p.sum(), 1, generator=g)), float(torch.rand(1, generator=g)))
             for g in generators]  # fmt: skip
    kinds = [k for k, _ in draws]
    known_bg = torch.tensor([c >= background_unknown for _, c in draws])
    warp = warp_mask(batch, known_bg).cpu() if 0 in kinds else None
    out = []
    for i, (k, g) in enumerate(zip(kinds, generators, strict=True)):
        if k == 0:
            out.append(warp[i : i + 1])
        elif k == 1:
            out.append(half_mask(1, h, w, g))
        elif k == 2:
            out.append(box_mask(1, h, w, g))
        else:
            out.append(torch.ones(1, 1, h, w))
    return torch.cat(out).to(batch.query.device)


# Simple inpainting baselines, against which the inpainting prior is benchmarked.


def mean_fill(img: Tensor, unknown: Tensor) -> Tensor:
    """Baseline fill: the unknown pixels (``unknown`` = 1) take the mean colour of the known ones."""
    known = 1 - unknown
    mean = (img * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp_min(1)
    return img * known + mean * unknown


def blurred_fill(img: Tensor, unknown: Tensor) -> Tensor:
    """Each unknown pixel: the Gaussian-weighted mean of the known pixels at the smallest σ (1, 2, 4, ...)
    whose window holds enough known weight."""
    known = 1 - unknown
    out = mean_fill(img, unknown)
    done = known.bool()
    for sigma in (1, 2, 4, 8, 16, 32):
        r = min(3 * sigma, img.shape[-1] - 1)
        x = torch.arange(-r, r + 1, dtype=img.dtype)
        g = torch.exp(-(x**2) / (2 * sigma**2))
        g = g / g.sum()

        def blur(t: Tensor, g=g, r=r) -> Tensor:
            c = t.shape[1]
            t = F.conv2d(t, g.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)
            return F.conv2d(t, g.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)

        den = blur(known)
        est = blur(img * known) / den.clamp_min(1e-8)
        take = (~done) & (den > 0.05)
        out = torch.where(take, est, out)
        done = done | take
    return out


def white_fill(img: Tensor, unknown: Tensor) -> Tensor:
    """Baseline fill: the unknown pixels are white (the background of every fewview-objects view)."""
    return img * (1 - unknown) + unknown


def nearest_fill(img: Tensor, unknown: Tensor) -> Tensor:
    """Baseline fill: each unknown pixel takes the colour of the nearest known pixel (grown one ring at a time,
    8-connected; pixels reached in the same ring from several known neighbours take their mean)."""
    known = (1 - unknown).clone()
    out = img * known
    ones = torch.ones(img.shape[1], 1, 3, 3, dtype=img.dtype)
    for _ in range(max(img.shape[-2:])):
        if bool((known > 0).all()):
            break
        n = F.conv2d(known, torch.ones(1, 1, 3, 3, dtype=img.dtype), padding=1)
        s = F.conv2d(out * known, ones, padding=1, groups=img.shape[1])
        grow = (known == 0) & (n > 0)
        out = torch.where(grow, s / n.clamp_min(1), out)
        known = known + grow.to(known.dtype)
    empty = known == 0  # no known pixel at all: mean colour of nothing is grey
    return torch.where(empty, torch.full_like(out, 0.5), out)
