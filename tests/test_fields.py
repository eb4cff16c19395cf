"""Fields: interpolation against references, the hash encoding against a naive loop, upsampling."""

import torch

from fewview.fields import DenseGridField, HashGridField, MLPField, build_field
from fewview.fields.base import density_shift, positional_encoding, sh_encoding, softplus_density
from fewview.fields.interp import corner_weights, scatter_weighted, trilinear, trilinear_reference


def test_trilinear_fast_path_equals_grid_sample_outputs_and_gradients():
    g = torch.Generator().manual_seed(0)
    res, c = 9, 5
    table = torch.randn(res**3, c, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.rand(500, 3, generator=g, dtype=torch.float64)
    u[:10] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)  # box faces and corners included
    fast, ref = trilinear(table, res, u), trilinear_reference(table, res, u)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=0)
    w = torch.randn(fast.shape, generator=g, dtype=torch.float64)
    (gf,) = torch.autograd.grad((fast * w).sum(), table)
    (gr,) = torch.autograd.grad((ref * w).sum(), table)
    torch.testing.assert_close(gf, gr, atol=1e-12, rtol=0)
    assert float(gf.abs().sum()) > 0


def test_fused_gather_backward_equals_index_add_bitwise():
    g = torch.Generator().manual_seed(1)
    for dtype, res, c in ((torch.float32, 12, 7), (torch.float64, 5, 1)):
        u = torch.rand(2000, 3, generator=g, dtype=dtype)
        idx, w = corner_weights(u, res)
        idx, w = torch.cat([idx, idx.flip(0)], 1), torch.cat([w, w], 1)  # K = 16, rows hit many times
        grad = torch.randn(2000, c, generator=g, dtype=dtype)
        fused = scatter_weighted((res**3, c), idx, w, grad, fused=True)
        ref = scatter_weighted((res**3, c), idx, w, grad, fused=False)
        assert fused.dtype == dtype and torch.equal(fused, ref)
        assert int((ref != 0).any(1).sum()) > res**3 // 2


def test_trilinear_reproduces_linear_functions_exactly():
    res = 7
    axis = torch.linspace(0, 1, res, dtype=torch.float64)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    table = (2 * x - 3 * y + 0.5 * z + 1).reshape(-1, 1)
    u = torch.rand(300, 3, dtype=torch.float64)
    torch.testing.assert_close(trilinear(table, res, u)[:, 0], 2 * u[:, 0] - 3 * u[:, 1] + 0.5 * u[:, 2] + 1)


def naive_hash_encode(field: HashGridField, x: torch.Tensor) -> torch.Tensor:
    """Instant-NGP's encoding written point by point, corner by corner."""
    u = field.normalize(x)
    primes = (1, 2654435761, 805459861)
    out = []
    for p in u:
        feats = []
        for res, size, off in zip(field.resolutions, field.sizes, field.offsets, strict=True):
            pos = p.clamp(0, 1) * (res - 1)
            p0 = pos.floor().clamp(max=res - 2)
            f = pos - p0
            acc = torch.zeros(field.tables.shape[1], dtype=field.tables.dtype)
            for dx in (0, 1):
                for dy in (0, 1):
                    for dz in (0, 1):
                        ix, iy, iz = int(p0[0]) + dx, int(p0[1]) + dy, int(p0[2]) + dz
                        if res**3 <= size:
                            row = (ix * res + iy) * res + iz
                        else:
                            row = ((ix * primes[0]) ^ (iy * primes[1]) ^ (iz * primes[2])) % size
                        wgt = (f[0] if dx else 1 - f[0]) * (f[1] if dy else 1 - f[1]) * (f[2] if dz else 1 - f[2])
                        acc = acc + wgt * field.tables[off + row]
            feats.append(acc)
        out.append(torch.cat(feats))
    return torch.stack(out)


def test_hash_encoding_matches_naive_loop():
    torch.manual_seed(0)
    f = HashGridField([[-1.0] * 3, [1.0] * 3], levels=4, features=2, log2_table=9, base_res=4, max_res=40).double()
    with torch.no_grad():
        f.tables.normal_()
    assert f.sizes[0] == 64 and f.sizes[-1] == 512, "coarse levels index directly, fine ones hash"
    x = torch.rand(20, 3, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(f.encode(x), naive_hash_encode(f, x), atol=1e-12, rtol=0)


def test_dense_grid_upsample_preserves_the_function():
    torch.manual_seed(0)
    f = DenseGridField([[-1.0] * 3, [1.0] * 3], resolution=9, feature_dim=3)
    axis = torch.linspace(0, 1, 9)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    with torch.no_grad():
        f.density_grid.copy_((x + 2 * y - z).reshape(-1, 1))
    pts = torch.rand(200, 3) * 2 - 1
    before = f.density(pts)[0]
    f.upsample(17)
    assert f.res == 17 and f.density_grid.shape == (17**3, 1) and f.config()["resolution"] == 17
    # the strides a fresh field (or a loaded checkpoint) has, so a resumed fit computes what an uninterrupted one does
    assert f.density_grid.stride() == (1, 1) and f.feature_grid.stride() == (3, 1)
    torch.testing.assert_close(f.density(pts)[0], before, atol=1e-4, rtol=1e-4)


def test_density_parameterisation_and_encodings():
    step = 0.01
    sigma = softplus_density(torch.zeros(1), density_shift(0.02), step)
    torch.testing.assert_close(1 - torch.exp(-sigma * step), torch.tensor([0.02]))
    d = torch.nn.functional.normalize(torch.randn(50, 3), dim=-1)
    sh = sh_encoding(d, 2)
    assert sh.shape == (50, 9)
    # Real SH of degree <= 2 are orthonormal on the sphere: Monte-Carlo Gram matrix ~ identity / (4 pi)
    big = torch.nn.functional.normalize(torch.randn(200000, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    gram = sh_encoding(big, 2).T @ sh_encoding(big, 2) / len(big) * 4 * torch.pi
    torch.testing.assert_close(gram, torch.eye(9), atol=0.03, rtol=0)
    assert positional_encoding(torch.zeros(4, 3), 10).shape == (4, 63)


def test_fields_round_trip_through_config():
    aabb = [[-1.0] * 3, [1.0] * 3]
    x, d = torch.rand(7, 3) * 2 - 1, torch.nn.functional.normalize(torch.randn(7, 3), dim=-1)
    for f in (
        DenseGridField(aabb, 8),
        HashGridField(aabb, levels=2, log2_table=8, max_res=32),
        MLPField(aabb, width=32),
    ):
        g = build_field(f.config())
        g.load_state_dict(f.state_dict())
        s1, c1 = f(x, d)
        s2, c2 = g(x, d)
        assert s1.shape == (7,) and c1.shape == (7, 3) and bool((c1 >= 0).all() and (c1 <= 1).all())
        torch.testing.assert_close(s1, s2)
        torch.testing.assert_close(c1, c2)
