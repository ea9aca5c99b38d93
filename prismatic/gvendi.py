"""Vendi scores of feature matrices, in the dual (d × d) form so n can be millions.

For n samples with unit feature rows X (n × d), the cosine Gram matrix is K = X Xᵀ (K_ii = 1) and

    Vendi(K) = exp( −Σ_i μ_i log μ_i ),   μ = eigenvalues of K / n   (0 log 0 := 0).

K/n and the second-moment matrix S = Xᵀ X / n (d × d, not centred) share their non-zero eigenvalues,
so G-Vendi is computed from S, accumulated over chunks of rows, never from the n × n matrix. The
score is an effective number of distinct samples: 1 for identical rows, n for orthogonal rows,
and at most min(n, d). G-Vendi is this score on unit-normalized projected gradients (Jung et al.,
2025).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def vendi_from_eigenvalues(eigenvalues: np.ndarray) -> float:
    """exp(Shannon entropy) of eigenvalues that sum to 1; tiny negative round-off is dropped."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    lam = lam[lam > 0]
    lam = lam / lam.sum()
    return float(np.exp(-np.sum(lam * np.log(lam))))


def vendi_from_gram(gram: np.ndarray) -> float:
    """Primal form: the Vendi Score of an n × n similarity matrix with unit diagonal."""
    gram = np.asarray(gram, dtype=np.float64)
    n = gram.shape[0]
    return vendi_from_eigenvalues(np.linalg.eigvalsh(gram / n))


def normalize_rows(features: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Rows scaled to unit L2 norm (float64 input stays float64, anything else becomes float32).

    A zero row has no direction and is refused.
    """
    if isinstance(features, np.ndarray) and not features.flags.writeable:
        features = features.copy()  # torch cannot wrap a read-only array (e.g. from Parquet)
    x = torch.as_tensor(features)
    x = x if x.dtype == torch.float64 else x.to(torch.float32)
    norms = x.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        bad = int((norms.squeeze(1) == 0).nonzero()[0])
        raise ValueError(f"feature row {bad} is all zeros and cannot be normalized")
    return x / norms


class SecondMoment:
    """Streaming S = Σ xxᵀ over unit rows: each chunk's XᵀX in the features' precision (float32
    features: float32 products, float64 features: float64), the running sum in float64.

    Memory is d × d float64 regardless of n; `update` normalizes rows, so raw features are fine.
    float32 products leave round-off eigenvalues near 1e-8, which move the score by about 1e-5.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0
        self._sum = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, chunk: torch.Tensor | np.ndarray) -> None:
        x = normalize_rows(chunk)
        if x.shape[1] != self.dim:
            raise ValueError(f"feature dimension {x.shape[1]} does not match {self.dim}")
        self._sum += (x.T @ x).to(torch.float64)
        self.n += x.shape[0]

    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of S / n (float64), summing to 1."""
        if self.n == 0:
            raise ValueError("no samples")
        return np.linalg.eigvalsh((self._sum / self.n).numpy())

    def score(self) -> float:
        return vendi_from_eigenvalues(self.eigenvalues())


def gvendi(features: torch.Tensor | np.ndarray, chunk_rows: int = 65536) -> float:
    """G-Vendi of a feature matrix (n × d), rows normalized here; see the module docstring."""
    return gvendi_of_chunks(_chunks(features, chunk_rows), dim=features.shape[1])


def gvendi_of_chunks(chunks: Iterable[torch.Tensor | np.ndarray], dim: int) -> float:
    """G-Vendi of rows that arrive in chunks (e.g. Parquet row groups)."""
    moment = SecondMoment(dim)
    for chunk in chunks:
        moment.update(chunk)
    return moment.score()


def _chunks(features: torch.Tensor | np.ndarray, rows: int):
    for start in range(0, features.shape[0], rows):
        yield features[start:start + rows]
