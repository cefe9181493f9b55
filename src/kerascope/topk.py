"""Top-k of class scores: on the host (NumPy) or on the torch device. (The JAX engine
selects inside its compiled forward: `jax.lax.top_k`.) Both give equal values lower index
first, as `jax.lax.top_k` does. (A NaN score, from a broken model, ranks last on the host and
first on the devices.)"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def host_top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row on the host, vectorised: the k-th largest value found by argpartition,
    then every value above it and, of those equal to it, the lowest indices (argpartition alone
    takes any of a tie at the cut, so ``-k 1`` and ``-k 2`` could disagree on rank 1)."""
    values = np.asarray(values, np.float32)
    k = max(1, min(int(k), values.shape[-1]))
    rows = values.reshape(-1, values.shape[-1])
    nan = np.isnan(rows)
    ranked = np.where(nan, -np.inf, rows) if nan.any() else rows  # a NaN ranks last
    if k < rows.shape[-1]:
        part = np.argpartition(-ranked, k - 1, axis=-1)[:, :k]
        cut = np.take_along_axis(ranked, part[:, k - 1 : k], axis=-1)
        if ((ranked >= cut).sum(axis=-1) > k).any():  # a tie at the cut: lowest indices
            above, at = ranked > cut, ranked == cut
            room = k - above.sum(axis=-1, keepdims=True)
            chosen = above | (at & (np.cumsum(at, axis=-1) <= room))
            part = np.nonzero(chosen)[1].reshape(-1, k)
        part.sort(axis=-1)  # equal values keep index order in the stable sort below
    else:
        part = np.broadcast_to(np.arange(k), rows.shape).copy()
    order = np.argsort(-np.take_along_axis(ranked, part, axis=-1), axis=-1, kind="stable")
    part = np.take_along_axis(part, order, axis=-1).reshape(*values.shape[:-1], k)
    return (np.take_along_axis(values, part, axis=-1),
            part.astype(np.int32))  # fmt: skip


def torch_top_k(run: Callable[[list], list]) -> Callable[[list, int], list]:
    """Top-k on the torch device, ties to the lower index as `host_top_k` (a stable sort:
    torch.topk does not say which of equal values it picks); 2 * k numbers per row come back."""
    import torch

    def top_k(xs: list, k: int) -> list:
        with torch.no_grad():
            out = run(xs)[0].float()
            values, indices = torch.sort(out, dim=-1, descending=True, stable=True)
            k = max(1, min(int(k), out.shape[-1]))
            return [values[..., :k], indices[..., :k].to(torch.int32)]

    return top_k
