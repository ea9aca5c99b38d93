"""The bfloat16 backend of `prismatic.synthesis.kmeans`: Lloyd iterations in torch whose every assignment
step gives the exact float32 argmax labels at about a quarter of float32's matmul cost, by bf16 blocks
with a proven error bound and Hamerly's bounds for cosine. The algorithm, its bounds and measurements
are in `prismatic.synthesis.kmeans`'s docstring; `spherical_kmeans(..., backend="bf16")` is the entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Entries of one block in the bf16 backend (a bf16 block 8 MiB, a float32 gather 16 MiB): blocks under glibc's
# 32 MiB mmap ceiling are reused from the heap instead of mapped and page-faulted anew (measured against 2²⁴:
# benchmarks/results/measurements.md, "From the code").
_BF16_BLOCK_ENTRIES = 1 << 22
_MOVERS = 128  # the centroids that moved most, scored in bf16 after each update (bf16 step 2)
_CANDIDATES = 32  # at most this many near-tie centroids a row are re-scored pairwise (bf16 step 1)


def fast_bf16_matmul() -> bool:
    """Whether torch multiplies bfloat16 matrices natively here: oneDNN enabled and an AVX512-BF16 or
    AMX-BF16 CPU (elsewhere bf16 is emulated and slower than float32)."""
    import torch

    capabilities = torch.cpu.get_capabilities()
    native = bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return native and torch.backends.mkldnn.is_available() and bool(torch.backends.mkldnn.enabled)


def bf16_margin(d: int) -> float:
    """M(d) = max(2⁻⁶, 3·2⁻⁸ + d·2⁻²²) ≥ |bf16 block entry − ⟨x, c⟩| for unit x, c ∈ R^d (module docstring)."""
    return max(2.0**-6, 3 * 2.0**-8 + d * 2.0**-22)


def train_bf16(x: np.ndarray, k: int, iterations: int, seed: int, restarts: int) -> tuple:
    """Best of `restarts` bf16 Lloyd runs from random distinct rows. Returns (centroids, labels,
    cosine) of its final assignment step as numpy arrays, and the re-assignment `_reseed_empty` uses."""
    import torch

    rows = torch.from_numpy(x)
    rows_bf16 = rows.bfloat16()
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        start = torch.from_numpy(rng.choice(x.shape[0], size=k, replace=False))
        run = _lloyd_bf16(rows, rows_bf16, rows.index_select(0, start), iterations)
        if best is None or run.objective > best.objective:
            best = run

    def reassign(centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels, cosine = _assign_all_bf16(rows, rows_bf16, torch.from_numpy(centroids))
        return labels.numpy(), cosine.numpy()

    return best.centroids.numpy(), best.labels.numpy(), best.cosine.numpy(), reassign


@dataclass(frozen=True)
class _Bf16Run:
    """One bf16 Lloyd run (torch tensors): final centroids, the final step's labels and float32 own
    cosines, J = their mean, and the rows scored against all k centroids at each assignment step."""

    centroids: torch.Tensor
    labels: torch.Tensor
    cosine: torch.Tensor
    objective: float
    scored: list[int]


def _lloyd_bf16(rows, rows_bf16, centroids, iterations: int, *, bounds: bool = True) -> _Bf16Run:
    """`iterations` Lloyd iterations from `centroids` and a final assignment step (bf16 blocks with
    the exact labels; with `bounds`, rows whose label provably stays are not scored)."""
    import torch

    n, d = rows.shape
    k = centroids.shape[0]
    labels = torch.zeros(n, dtype=torch.long)
    lower = torch.full((n,), -float("inf"), dtype=torch.float64)
    upper = torch.full((n,), float("inf"), dtype=torch.float64)
    # ≥ what recomputing a row's own cosine can add to lower: 2M after scoring (lower may be v₀ − M),
    # plus 2δ_a(i) per update; rows that cannot pass the bound even then go straight to scoring.
    gain = torch.zeros(n, dtype=torch.float64)
    slack, margin = d * 2.0**-22, bf16_margin(d)
    scored = []
    for step in range(iterations + 1):
        if bounds and step > 0:
            stale = lower < upper + slack
            recheck = torch.nonzero(stale & (lower + gain >= upper + slack)).squeeze(1)
            lower[recheck] = _own_cosine(rows, centroids, labels, recheck).double()
            gain[recheck] = 0
            active = torch.nonzero(stale & (lower < upper + slack)).squeeze(1)
        else:
            active = torch.arange(n)
        scored.append(int(active.numel()))
        changed = _score_rows(rows, rows_bf16, centroids, active, labels, lower, upper)
        if step == iterations or (step > 0 and changed == 0):
            break  # no label changed: a fixed point, later iterations would change nothing
        gain[active] = 2 * margin
        previous = centroids
        centroids = _update_centroids(rows, labels, centroids)
        shift = torch.linalg.vector_norm(centroids.double() - previous.double(), dim=1)
        own_shift = shift.index_select(0, labels)
        lower -= own_shift
        gain += 2 * own_shift
        if bounds and k > 1:
            upper = _raise_upper(rows_bf16, centroids, labels, upper, shift, margin)
    cosine = _own_cosine(rows, centroids, labels, torch.arange(n))
    return _Bf16Run(centroids=centroids, labels=labels, cosine=cosine,
                    objective=float(cosine.sum(dtype=torch.float64)) / n, scored=scored)


def _raise_upper(rows_bf16, centroids, labels, upper, shift, margin: float):
    """upper_i after an update (bf16 step 2): + the (m+1)-th largest shift, and at least bf16 entry + M
    against each of the m centroids that moved most (other than the row's own)."""
    import torch

    k = centroids.shape[0]
    movers = min(_MOVERS, k // 16)  # ≤ 1/16 of the centroids: the block costs ≤ 1/16 of a step
    largest, moved = shift.topk(movers + 1)
    upper = upper + largest[movers]
    if float(largest[0]) <= float(largest[movers]):  # none moved more than the rest: nothing to score
        return upper
    moved = moved[:movers]
    movers_bf16_t = centroids.index_select(0, moved).bfloat16().T
    step = max(1, _BF16_BLOCK_ENTRIES // max(movers, rows_bf16.shape[1]))
    for start in range(0, rows_bf16.shape[0], step):
        block = (rows_bf16[start:start + step] @ movers_bf16_t).float()
        own = labels[start:start + step].unsqueeze(1) == moved.unsqueeze(0)
        nearest = block.masked_fill(own, -float("inf")).amax(dim=1).double() + margin
        upper[start:start + step] = torch.maximum(upper[start:start + step], nearest)
    return upper


def _assign_all_bf16(rows, rows_bf16, centroids) -> tuple:
    """Labels (the exact argmax, as `assign`) and float32 own cosines of all rows, by bf16 blocks."""
    import torch

    n = rows.shape[0]
    labels = torch.zeros(n, dtype=torch.long)
    bound = torch.empty(n, dtype=torch.float64)
    everything = torch.arange(n)
    _score_rows(rows, rows_bf16, centroids, everything, labels, bound, bound.clone())
    return labels, _own_cosine(rows, centroids, labels, everything)


def _update_centroids(rows, labels, centroids):
    """c_j = normalized sum of its rows; a cluster with no rows (or a zero sum) keeps its centroid."""
    import torch

    n, k = rows.shape[0], centroids.shape[0]
    membership = torch.sparse_coo_tensor(torch.stack([labels, torch.arange(n)]), torch.ones(n, dtype=rows.dtype),
                                         (k, n), check_invariants=False)  # far faster than index_add_ here
    sums = torch.sparse.mm(membership, rows)
    norms = torch.linalg.vector_norm(sums, dim=1, keepdim=True)
    return torch.where(norms > 0, sums / norms.clamp_min(torch.finfo(sums.dtype).tiny), centroids)


def _own_cosine(rows, centroids, labels, which):
    """float32 ⟨x_i, c_labels[i]⟩ for the rows `which`."""
    return _dots(rows, which, centroids, labels.index_select(0, which))


def _dots(rows, row_index, centroids, centroid_index):
    """float32 ⟨rows[row_index[p]], centroids[centroid_index[p]]⟩ for each pair p, a block of pairs at a time."""
    import torch

    out = torch.empty(row_index.numel(), dtype=rows.dtype)
    step = max(1, _BF16_BLOCK_ENTRIES // rows.shape[1])
    for start in range(0, row_index.numel(), step):
        left = rows.index_select(0, row_index[start:start + step]).unsqueeze(1)
        right = centroids.index_select(0, centroid_index[start:start + step]).unsqueeze(2)
        out[start:start + step] = torch.bmm(left, right).view(-1)
    return out


def _score_rows(rows, rows_bf16, centroids, active, labels, lower, upper) -> int:
    """Score the rows `active` against all centroids: write their exact labels, lower bounds on their
    own cosines and upper bounds on their cosines to every other centroid (float64), in place.
    Returns how many of their labels changed."""
    k, d = centroids.shape
    step = max(1, _BF16_BLOCK_ENTRIES // max(k, d))
    centroids_bf16_t = centroids.bfloat16().T
    margin = bf16_margin(d)
    changed = 0
    everything = active.numel() == rows.shape[0]  # then `active` is 0 … n−1: slices, no copies
    for start in range(0, active.numel(), step):
        idx = active[start:start + step]
        block_bf16 = rows_bf16[start:start + step] if everything else rows_bf16.index_select(0, idx)
        new, lower[idx], upper[idx] = _bf16_block(rows, block_bf16, idx, centroids, centroids_bf16_t, margin)
        changed += int((new != labels.index_select(0, idx)).sum())
        labels[idx] = new
    return changed


def _bf16_block(rows, block_bf16, idx, centroids, centroids_bf16_t, margin: float) -> tuple:
    """(labels, lower, upper) of rows `idx` (`block_bf16`: those rows in bf16) from one bf16 block,
    candidates of near-ties re-scored in float32 (module docstring, bf16 step 1)."""
    import torch

    k = centroids.shape[0]
    block = block_bf16 @ centroids_bf16_t
    if k == 1:
        lower = block[:, 0].double() - margin
        return torch.zeros(idx.numel(), dtype=torch.long), lower, torch.full_like(lower, -float("inf"))
    values, best = block.topk(2, dim=1)
    values = values.double()
    labels = best[:, 0].clone()
    lower = values[:, 0] - margin
    upper = values[:, 1] + margin
    close = torch.nonzero(values[:, 0] - values[:, 1] <= 2 * margin).squeeze(1)
    if close.numel() == 0:
        return labels, lower, upper
    scores = block.index_select(0, close).float()
    # Centroids that can be the exact argmax: entry ≥ v₀ − 2M (2⁻²⁰ lower: a superset despite rounding).
    threshold = (values.index_select(0, close)[:, 0] - 2 * margin - 2.0**-20).float()
    candidate = scores >= threshold.unsqueeze(1)
    outside = scores.masked_fill(candidate, -float("inf")).amax(dim=1).double() + margin  # ≥ any non-candidate
    members = idx.index_select(0, close)
    few = candidate.sum(dim=1) <= _CANDIDATES
    at = torch.nonzero(few).squeeze(1)
    if at.numel():  # re-score the candidates in float32
        pair_row, pair_col = torch.nonzero(candidate.index_select(0, at), as_tuple=True)  # by row, then column
        exact = _dots(rows, members.index_select(0, at).index_select(0, pair_row), centroids, pair_col)
        m = at.numel()
        top = torch.full((m,), -float("inf")).scatter_reduce(0, pair_row, exact, "amax")
        is_top = exact == top.index_select(0, pair_row)
        label = torch.full((m,), k).scatter_reduce(0, pair_row[is_top], pair_col[is_top], "amin")  # ties: lowest
        others = ~(is_top & (pair_col == label.index_select(0, pair_row)))
        second = torch.full((m,), -float("inf")).scatter_reduce(0, pair_row[others], exact[others], "amax")
        labels[close[at]], lower[close[at]] = label, top.double()
        upper[close[at]] = torch.maximum(second.double(), outside.index_select(0, at))
    at = torch.nonzero(~few).squeeze(1)
    if at.numel():  # too many candidates: the row against all centroids in float32
        exact = rows.index_select(0, members.index_select(0, at)) @ centroids.T
        top, which = exact.max(dim=1)
        labels[close[at]], lower[close[at]] = which, top.double()
        upper[close[at]] = exact.topk(2, dim=1).values[:, 1].double()
    return labels, lower, upper
