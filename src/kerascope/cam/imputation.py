"""ROAD's noisy linear imputation (Rong et al. 2022, Sec. 4.2): the pixels a ROAD sweep removes
are refilled from their neighbours, so the fill does not draw the removed shape for the model
to see (`kerascope.cam.faithfulness`)."""

from __future__ import annotations

import numpy as np

ROAD_NOISE = 0.01 * 127.5
"""Noise std of the imputed pixels, in 0..255 units: pytorch-grad-cam's ``NoisyLinearImputer``
adds 0.01 in normalised input units, here the [-1, 1] range EfficientNet-Lite feeds on."""
# Neighbour offsets (row, column) and their weights in the imputation (ROAD, Sec. 4.2).
_NEIGHBOURS = (
    ((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
    ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6),
)  # fmt: skip


def impute(
    image: np.ndarray, removed: np.ndarray, rng: np.random.Generator | None = None
) -> np.ndarray:
    """ROAD's noisy linear imputation (Rong et al. 2022, Sec. 4.2; pytorch-grad-cam's
    ``NoisyLinearImputer``): each removed pixel becomes the weighted mean of its in-image
    neighbours (:data:`_NEIGHBOURS`), removed neighbours being unknowns too, so one sparse
    system ``A x = b`` fills every hole smoothly from its border; then Gaussian noise of std
    :data:`ROAD_NOISE` is added to the filled pixels (``rng`` None: no noise).

    Args:
        image: (H, W, C) float pixels in 0..255.
        removed: (H, W) bool, True where a pixel is to be imputed.

    Returns:
        (H, W, C) float32, clipped to 0..255.
    """
    from scipy import sparse
    from scipy.sparse.linalg import splu

    height, width, channels = image.shape
    flat = image.reshape(-1, channels).astype(np.float64)
    gone = np.asarray(removed, bool).ravel()
    unknown = np.flatnonzero(gone)
    n = unknown.size
    out = flat.copy()
    if n:
        variable = np.full(gone.size, -1, np.int64)
        variable[unknown] = np.arange(n)
        row0, col0 = np.divmod(unknown, width)
        rows, cols, values = [np.arange(n)], [np.arange(n)], []
        weight_sum = np.zeros(n)
        b = np.zeros((n, channels))
        for (dr, dc), w in _NEIGHBOURS:
            r, c = row0 + dr, col0 + dc
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            eq, neighbour = np.flatnonzero(inside), (r * width + c)[inside]
            weight_sum[eq] += w  # sum_j w_j (x_i - x_j) = 0 over in-image neighbours j
            known = ~gone[neighbour]
            b[eq[known]] += w * flat[neighbour[known]]
            rows.append(eq[~known])
            cols.append(variable[neighbour[~known]])
            values.append(np.full(int((~known).sum()), -w))
        values.insert(0, weight_sum)
        a = sparse.csc_matrix(
            (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
        )
        # Symmetric positive definite (a grounded graph Laplacian): minimum degree on A + A^T
        # and no pivoting factor it fastest (measured against COLAMD, the default).
        lu = splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                  options={"SymmetricMode": True})  # fmt: skip
        filled = lu.solve(b)
        if rng is not None:
            filled += rng.normal(0.0, ROAD_NOISE, filled.shape)
        out[unknown] = filled
    return np.clip(out, 0.0, 255.0).astype(np.float32).reshape(image.shape)
