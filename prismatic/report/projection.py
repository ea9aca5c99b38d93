"""2-D maps of gradient features: PCA (default) or UMAP, fitted on the pool, applied to the candidates.

PCA. With the pool's unit features P (n × d) and their mean μ, the map of any row x is

    (x − μ) · [v₁ v₂]

where v₁, v₂ are the top two right singular vectors of P − 1μᵀ (the directions of largest variance
of the pool). They come from a seeded randomized SVD (Halko, Martinsson & Tropp 2011): a Gaussian
test matrix Ω (d × (2 + oversample)), Y = (P − 1μᵀ)Ω, `power_iterations` rounds of
Y ← (P − 1μᵀ)(P − 1μᵀ)ᵀY with QR in between, then the SVD of Qᵀ(P − 1μᵀ). The centred matrix is never
formed: (P − 1μᵀ)Ω = PΩ − 1(μᵀΩ). Cost O(n d (2 + oversample)(1 + 2 · power_iterations)); memory
O(n (2 + oversample) + d (2 + oversample)) beyond P. Each vector's sign is fixed so that its entry of
largest magnitude is positive, so one pool always gives one map.

UMAP (umap-learn, `n_neighbors` 15, cosine metric, `random_state` = seed) is fitted on at most
`UMAP_FIT_LIMIT` pool rows (a seeded uniform draw) after PCA to `UMAP_PCA_DIM` dimensions, and
`transform` places every other row. Its axes have no units; PCA's are the features' own (unit-norm
gradients projected on v₁, v₂).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prismatic.errors import PrismError

PROJECTIONS = ("pca", "umap")
UMAP_FIT_LIMIT = 20_000
UMAP_PCA_DIM = 50


@dataclass
class PCA:
    """A fitted 2-D (or k-D) PCA: `mean` (d,), `components` (k × d, unit rows), `explained` (k,): the
    share of the pool's total variance along each component (0 … 1)."""

    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(x − μ) · componentsᵀ, float32 (rows of x are samples)."""
        x = np.asarray(x, dtype=np.float32)
        return (x @ self.components.T - self.mean @ self.components.T).astype(np.float32)


def fit_pca(pool: np.ndarray, k: int = 2, *, seed: int = 0, oversample: int = 10,
            power_iterations: int = 6) -> PCA:
    """The top-k principal directions of `pool` (n × d) by randomized SVD (module docstring)."""
    x = np.asarray(pool, dtype=np.float32)
    n, d = x.shape
    if n < 2:
        raise PrismError(f"a PCA map needs at least 2 pool rows, got {n}")
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    width = min(k + oversample, d, n)
    omega = np.random.default_rng(seed).standard_normal((d, width)).astype(np.float32)

    def centred_times(m: np.ndarray) -> np.ndarray:  # (X − 1μᵀ) m
        return x @ m - (mean @ m)[None, :]

    def centred_t_times(m: np.ndarray) -> np.ndarray:  # (X − 1μᵀ)ᵀ m
        return x.T @ m - np.outer(mean, m.sum(axis=0))

    q, _ = np.linalg.qr(centred_times(omega))
    for _ in range(power_iterations):
        z, _ = np.linalg.qr(centred_t_times(q))
        q, _ = np.linalg.qr(centred_times(z))
    b = centred_t_times(q).T.astype(np.float64)  # Qᵀ(X − 1μᵀ), width × d
    _, singular, vt = np.linalg.svd(b, full_matrices=False)
    components = vt[:k]
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    components = (components * signs[:, None]).astype(np.float32)
    parts = np.array_split(x, max(1, n // 8192))
    squares = sum(float(np.einsum("ij,ij->", part, part, dtype=np.float64)) for part in parts)
    total = squares - n * float(mean.astype(np.float64) @ mean)  # Σ‖x − μ‖² = Σ‖x‖² − n‖μ‖²
    explained = (singular[:k] ** 2) / total if total > 0 else np.zeros(len(components))
    return PCA(mean=mean, components=components, explained=explained)


def project(pool: np.ndarray, others: np.ndarray, method: str = "pca", *, seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray, dict]:
    """(pool map n × 2, others' map m × 2, about): the 2-D map of `pool`, fitted on it, and of `others`
    placed by the same fit. `about`: method, and for PCA the variance share of each axis, for UMAP the
    number of pool rows fitted on."""
    if method not in PROJECTIONS:
        raise PrismError(f"option --projection: expected one of {', '.join(PROJECTIONS)}, got {method!r}")
    pool = np.asarray(pool, dtype=np.float32)
    others = np.asarray(others, dtype=np.float32).reshape(-1, pool.shape[1])
    if method == "pca":
        pca = fit_pca(pool, seed=seed)
        return pca.transform(pool), pca.transform(others), {
            "method": "pca", "explained": [round(float(v), 4) for v in pca.explained]}
    return _umap(pool, others, seed)


def _umap(pool: np.ndarray, others: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    try:
        import umap
    except ImportError as exc:  # pragma: no cover - umap-learn is a pinned dependency
        raise PrismError(f"--projection umap needs umap-learn (pip install umap-learn): {exc}") from None
    if len(pool) < 4:
        raise PrismError(f"a UMAP map needs at least 4 pool rows, got {len(pool)}; use --projection pca")
    reduced = fit_pca(pool, k=min(UMAP_PCA_DIM, pool.shape[1], len(pool) - 1), seed=seed)
    pool_r, others_r = reduced.transform(pool), reduced.transform(others)
    fit_rows = np.arange(len(pool))
    if len(pool) > UMAP_FIT_LIMIT:
        fit_rows = np.sort(np.random.default_rng(seed).choice(len(pool), UMAP_FIT_LIMIT, replace=False))
    model = umap.UMAP(n_neighbors=min(15, len(fit_rows) - 1), metric="cosine", random_state=seed, n_jobs=1)
    fitted = model.fit_transform(pool_r[fit_rows])
    pool_map = np.empty((len(pool), 2), dtype=np.float32)
    pool_map[fit_rows] = fitted
    rest = np.setdiff1d(np.arange(len(pool)), fit_rows)
    if len(rest):
        pool_map[rest] = model.transform(pool_r[rest])
    others_map = model.transform(others_r).astype(np.float32) if len(others) else np.zeros((0, 2), np.float32)
    return pool_map, others_map, {"method": "umap", "fitted_on": int(len(fit_rows))}
