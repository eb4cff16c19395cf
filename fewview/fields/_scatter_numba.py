"""The trilinear gather's backward as one numba loop (imported on first use: numba is not needed to import fields)."""

from __future__ import annotations

from numba import njit


@njit(cache=True)
def scatter_add_weighted(idx, w, grad, out):
    """out[idx[n, k], :] += w[n, k] * grad[n, :] for n, k in order (no fastmath: the sums match index_add_)."""
    n, k = idx.shape
    c = grad.shape[1]
    for i in range(n):
        for j in range(k):
            r = idx[i, j]
            wj = w[i, j]
            for q in range(c):
                out[r, q] += wj * grad[i, q]
