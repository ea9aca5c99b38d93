"""The atlas's 2-D maps: randomized PCA against numpy's exact SVD, UMAP through umap-learn."""

import numpy as np
import pytest

from prismatic.errors import PrismError
from prismatic.report.projection import fit_pca, project


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, d))
    x = centres[rng.integers(0, 5, n)] + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_randomized_pca_equals_the_exact_top_two_directions():
    pool, others = clustered(400, 64), clustered(30, 64, seed=1)
    centred = pool.astype(np.float64) - pool.astype(np.float64).mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    pca = fit_pca(pool, seed=3)
    for i in range(2):  # the same direction up to sign, and the sign rule: largest entry positive
        exact = vt[i] * np.sign(vt[i][np.abs(vt[i]).argmax()])
        np.testing.assert_allclose(pca.components[i], exact, atol=2e-4)
    np.testing.assert_allclose(pca.explained, singular[:2] ** 2 / (singular ** 2).sum(), rtol=1e-4)
    pool_map, others_map, about = project(pool, others, "pca", seed=3)
    signs = np.sign(vt[:2][np.arange(2), np.abs(vt[:2]).argmax(axis=1)])
    np.testing.assert_allclose(others_map, (others - pool.mean(axis=0)) @ (vt[:2] * signs[:, None]).T, atol=1e-4)
    np.testing.assert_allclose(pool_map, centred @ (vt[:2] * signs[:, None]).T, atol=1e-4)
    assert about == {"method": "pca", "explained": [round(float(v), 4) for v in pca.explained]}


def test_one_pool_gives_one_map_whatever_the_seed_of_the_sketch():
    pool = clustered(300, 32)
    a, _, _ = project(pool, pool[:0], "pca", seed=0)
    b, _, _ = project(pool, pool[:0], "pca", seed=11)
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.slow  # numba compiles umap-learn's kernels in each process (about a minute on 2 cores)
def test_umap_places_the_candidates_with_the_pool_fit():
    pool, others = clustered(200, 32), clustered(20, 32, seed=2)
    pool_map, others_map, about = project(pool, np.concatenate([others, pool[:5]]), "umap", seed=0)
    assert pool_map.shape == (200, 2) and others_map.shape == (25, 2) and about == {"method": "umap", "fitted_on": 200}
    assert np.isfinite(pool_map).all() and np.isfinite(others_map).all()
    # a candidate that is a copy of a pool row lands near that row: closer than the median distance between rows
    spread = np.median(np.linalg.norm(pool_map[:, None] - pool_map[None], axis=2))
    assert (np.linalg.norm(others_map[20:] - pool_map[:5], axis=1) < spread).all()


def test_unknown_projection_and_too_small_pools_are_one_line_errors():
    with pytest.raises(PrismError, match="--projection: expected one of pca, umap, got 'tsne'"):
        project(clustered(10, 8), clustered(2, 8), "tsne")
    with pytest.raises(PrismError, match="at least 2 pool rows"):
        project(clustered(1, 8), clustered(2, 8), "pca")
