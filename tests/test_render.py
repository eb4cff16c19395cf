"""Volume rendering against analytic answers, references and finite differences."""

import math

import pytest
import torch

from fewview.fields.base import Field
from fewview.render import (
    OccupancyGrid,
    composite,
    composite_packed,
    distortion_loss,
    march_rays,
    ray_aabb,
    sample_pdf,
    sample_stratified,
)


class SphereField(Field):
    """Constant density ``sigma`` and colour inside a sphere, nothing outside."""

    def __init__(self, center=(0.0, 0.0, 0.0), radius=0.5, sigma=3.0, color=(0.2, 0.6, 0.9)):
        super().__init__()
        self.register_buffer("aabb", torch.tensor([[-1.0] * 3, [1.0] * 3]))
        self.center, self.radius, self.sigma = torch.tensor(center), radius, sigma
        self.rgb = torch.tensor(color)
        self._config = {}

    def density(self, x):
        inside = (x - self.center.to(x)).norm(dim=-1) < self.radius
        return inside.to(x.dtype) * self.sigma, x

    def color(self, aux, dirs):
        return self.rgb.to(aux).expand(len(aux), 3)


def test_ray_aabb():
    o = torch.tensor([[-3.0, 0.2, 0.1], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    tn, tf, hit = ray_aabb(o, d, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    torch.testing.assert_close(tn[:2], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(tf[:2], torch.tensor([4.0, 1.0]))
    assert hit.tolist() == [True, True, False]


def test_homogeneous_slab_analytic():
    """Density s on [t0, t1]: opacity 1 - exp(-s L); expected depth has a closed form."""
    s, t0, t1, n = 2.0, 1.0, 1.6, 20000
    t = torch.linspace(0, 3, n + 1, dtype=torch.float64)
    mid, delta = (t[:-1] + t[1:]) / 2, t[1:] - t[:-1]
    sigma = ((mid > t0) & (mid < t1)).double() * s
    rgb = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64).expand(n, 3)
    out = composite(sigma[None], rgb[None], mid[None], delta[None], background=1.0)
    L = t1 - t0
    a = 1 - math.exp(-s * L)
    assert abs(float(out.opacity[0]) - a) < 1e-3
    torch.testing.assert_close(
        out.rgb[0], torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64) * a + (1 - a), atol=1e-3, rtol=0
    )
    # E[t] = int_t0^t1 t s exp(-s (t - t0)) dt
    depth = t0 * a + (1 - math.exp(-s * L) * (1 + s * L)) / s
    assert abs(float(out.depth[0]) - depth) < 1e-3


def test_sphere_chord_through_marcher():
    """A ray at impact parameter b crosses 2 sqrt(r^2 - b^2) of constant density."""
    f = SphereField(radius=0.5, sigma=3.0)
    b = torch.tensor([0.0, 0.2, 0.4])
    o = torch.stack([torch.full_like(b, -2.0), b, torch.zeros_like(b)], -1)
    d = torch.tensor([[1.0, 0.0, 0.0]]).expand(3, 3)
    out = march_rays(f, o, d, f.aabb, step=1e-3, background=0.0, weight_threshold=0.0)
    expected = 1 - torch.exp(-3.0 * 2 * torch.sqrt(0.25 - b**2))
    torch.testing.assert_close(out.opacity, expected, atol=5e-3, rtol=0)
    torch.testing.assert_close(out.rgb, expected[:, None] * f.rgb, atol=5e-3, rtol=0)


def test_packed_equals_dense_and_gradients():
    g = torch.Generator().manual_seed(0)
    r, s = 5, 17
    sigma = (torch.rand(r, s, generator=g, dtype=torch.float64) * 3).requires_grad_()
    rgb = torch.rand(r, s, 3, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.sort(torch.rand(r, s, generator=g, dtype=torch.float64) * 4, -1).values
    delta = torch.rand(r, s, generator=g, dtype=torch.float64) * 0.2
    dense = composite(sigma, rgb, t, delta, background=0.5)
    packed = composite_packed(
        sigma.reshape(-1), rgb.reshape(-1, 3), t.reshape(-1), delta.reshape(-1), dense.ray_indices, r, 0.5
    )
    for a, b in ((dense.rgb, packed.rgb), (dense.opacity, packed.opacity), (dense.depth, packed.depth)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)

    def f(sig, col):
        o = composite_packed(sig, col, t.reshape(-1), delta.reshape(-1), dense.ray_indices, r, 0.5)
        return torch.cat([o.rgb.reshape(-1), o.depth, o.opacity])

    assert torch.autograd.gradcheck(
        f, (sigma.detach().reshape(-1).requires_grad_(), rgb.detach().reshape(-1, 3).requires_grad_())
    )


def test_distortion_loss_matches_naive():
    g = torch.Generator().manual_seed(1)
    r, s = 4, 9
    sigma = torch.rand(r, s, generator=g, dtype=torch.float64) * 4
    t = torch.sort(torch.rand(r, s, generator=g, dtype=torch.float64) * 3, -1).values
    delta = torch.rand(r, s, generator=g, dtype=torch.float64) * 0.3
    out = composite(sigma, torch.zeros(r, s, 3, dtype=torch.float64), t, delta)
    w = out.weights.reshape(r, s)
    naive = (w[:, :, None] * w[:, None, :] * (t[:, :, None] - t[:, None, :]).abs()).sum((1, 2)) + (w**2 * delta).sum(
        -1
    ) / 3
    torch.testing.assert_close(distortion_loss(out), naive, atol=1e-12, rtol=0)


def test_occupancy_rendering_equals_dense():
    f = SphereField(center=(0.1, -0.2, 0.05), radius=0.45)
    occ = OccupancyGrid(f.aabb, 32)
    occ.update(lambda x: f.density(x)[0], step=0.01)
    assert 0.01 < occ.fraction < 0.2
    g = torch.Generator().manual_seed(0)
    o = torch.randn(300, 3, generator=g) * 0.2 + torch.tensor([-2.5, 0.0, 0.0])
    target = torch.randn(300, 3, generator=g) * 0.3
    d = torch.nn.functional.normalize(target - o, dim=-1)
    dense = march_rays(f, o, d, f.aabb, 0.01, None, 1.0, weight_threshold=0.0)
    fast = march_rays(f, o, d, f.aabb, 0.01, occ, 1.0, weight_threshold=0.0)
    assert fast.num_samples < dense.num_samples / 3
    torch.testing.assert_close(fast.rgb, dense.rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast.depth, dense.depth, atol=1e-5, rtol=0)
    # Early termination (colour only where weight > 1e-4) changes colours by at most ~1e-4 per sample.
    early = march_rays(f, o, d, f.aabb, 0.01, occ, 1.0)
    torch.testing.assert_close(early.rgb, dense.rgb, atol=5e-3, rtol=0)


def test_occupancy_mask_carving_keeps_the_object():
    from tests.helpers import SPHERE_CENTER, SPHERE_RADIUS, make_cams, sphere_mask

    cams = make_cams(n=8, h=40, w=48)
    masks = sphere_mask(cams).float()[:, None]
    occ = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), 24)
    occ.carve_with_masks(cams, masks)
    c = occ.cell_centers()
    inside = (c - SPHERE_CENTER.float()).norm(dim=-1) < SPHERE_RADIUS * 0.95
    assert bool(occ.occupied.reshape(-1)[inside].all()), "the visual hull contains the object"
    assert occ.fraction < 0.3


def test_stratified_and_pdf_sampling():
    near, far = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    t = sample_stratified(near, far, 8, perturb=False)
    torch.testing.assert_close(t[0], 1 + (torch.arange(8) + 0.5) * 0.25)
    tp = sample_stratified(near, far, 8, generator=torch.Generator().manual_seed(0))
    edges = near[:, None] + (far - near)[:, None] * torch.arange(9) / 8
    assert bool(((tp >= edges[:, :-1]) & (tp < edges[:, 1:])).all())
    bins = torch.linspace(0, 4, 5).expand(1, 5)
    weights = torch.tensor([[0.0, 1.0, 0.0, 3.0]])
    s = sample_pdf(bins, weights, 40000, generator=torch.Generator().manual_seed(0))
    frac = torch.histc(s[0], bins=4, min=0, max=4) / 40000
    torch.testing.assert_close(frac, torch.tensor([0.0, 0.25, 0.0, 0.75]), atol=0.01, rtol=0)


@pytest.mark.parametrize("perturb", [False, True])
def test_marcher_samples_stay_in_box(perturb):
    f = SphereField()
    o = torch.tensor([[-3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = march_rays(f, o, d, f.aabb, 0.1, perturb=perturb, generator=torch.Generator().manual_seed(0))
    assert out.ray_indices.tolist() == sorted(out.ray_indices.tolist())
    counts = torch.bincount(out.ray_indices, minlength=2)
    assert counts.tolist() in ([20, 10], [19, 10], [20, 9], [19, 9])
    assert bool((out.t[out.ray_indices == 0] > 2).all() and (out.t[out.ray_indices == 0] < 4).all())
