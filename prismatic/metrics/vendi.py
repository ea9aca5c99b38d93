"""Vendi scores of feature matrices: the n × n Gram form while rows are fewer than d, the d × d
second-moment form otherwise, so n can be millions and a small set costs what its size does.

For n samples with unit feature rows X (n × d), the cosine Gram matrix is K = X Xᵀ (K_ii = 1) and

    Vendi(K) = exp( −Σ_i μ_i log μ_i ),   μ = eigenvalues of K / n   (0 log 0 := 0).

K/n and the second-moment matrix S = Xᵀ X / n (d × d, not centred) share their non-zero eigenvalues
(both are the squared singular values of X/√n), so either one gives the score:

    Gram form    (n < d): K/n, built in O(n²d), decomposed in O(n³); memory the n × d rows and n × n.
    moment form  (n ≥ d): S, accumulated over chunks of rows in O(nd²), decomposed in O(d³); memory
                 d × d whatever n is.

`gram_form` makes the choice; `SecondMoment` streams rows, keeping them (and their Gram matrix) while
fewer than d have arrived and switching to the accumulated S once n reaches d, so it never holds more
than d rows plus the chunk that arrives. The score is an effective number of distinct samples: 1 for
identical rows, n for orthogonal rows, and at most min(n, d). G-Vendi is this score on
unit-normalized projected gradients (Jung et al., 2025).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from prismatic.errors import InputError
from prismatic.gradients.files import PARQUET_CHUNK_ROWS, feature_chunks, feature_dim


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
    """Rows scaled to unit L2 norm, x_i / ‖x_i‖₂, in torch (float64 input stays float64, anything else
    becomes float32); `prismatic.synthesis.kmeans.unit_rows` is the numpy twin.

    A zero row has no direction and is refused. A read-only array (e.g. a zero-copy view of Parquet
    data) is wrapped without a copy: it is only read, the result is a new tensor.
    """
    if isinstance(features, np.ndarray) and not features.flags.writeable:
        with warnings.catch_warnings():  # torch warns that it cannot honour read-only; nothing writes
            warnings.simplefilter("ignore", UserWarning)
            x = torch.as_tensor(features)
    else:
        x = torch.as_tensor(features)
    x = x if x.dtype == torch.float64 else x.to(torch.float32)
    norms = x.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        bad = int((norms.squeeze(1) == 0).nonzero()[0])
        raise ValueError(f"feature row {bad} is all zeros and cannot be normalized")
    return x / norms


FORMS = ("auto", "gram", "moment")


def gram_form(rows: int, dim: int, form: str = "auto") -> bool:
    """Whether `rows` unit rows of width `dim` are handled in the n × n Gram form: `auto` takes it while
    rows < dim (then O(n²d) < O(nd²) and O(n³) < O(d³)); `gram` and `moment` force a form (for checks)."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; expected one of {', '.join(FORMS)}")
    return form == "gram" or (form == "auto" and rows < dim)


class SecondMoment:
    """The spectrum of n unit rows, streamed: G-Vendi's eigenvalues of K/n = XXᵀ/n or S = XᵀX/n.

    Gram form (`gram_form(n, d, form)`): the unit rows are kept with their Gram matrix XXᵀ, grown by each
    chunk's products with the rows before it (O(chunk · n · d)). Moment form: S = Σ_chunks XᵀX, O(chunk · d²)
    a chunk. In `auto` the Gram form is left for good once n reaches d: S is then summed from the kept rows,
    chunk by chunk as the moment form would have, and the rows are dropped. Products are in the features'
    precision (float32 features: float32 products, float64 features: float64), sums and Gram matrix in
    float64; float32 products leave round-off eigenvalues near 1e-8, which move the score by about 1e-5.
    `update` normalizes rows, so raw features are fine; a zero or non-finite row is refused (ValueError).
    Memory: fewer than d rows plus their Gram matrix, or d × d float64, whatever n is.
    """

    def __init__(self, dim: int, form: str = "auto"):
        self.dim = dim
        self.form = form
        self.n = 0
        self._rows: list[torch.Tensor] = []  # Gram form: the unit rows, chunk by chunk
        self._gram = torch.zeros(0, 0, dtype=torch.float64)  # Gram form: buffer whose [:n, :n] is XXᵀ
        self._sum = None if gram_form(0, dim, form) else torch.zeros(dim, dim, dtype=torch.float64)

    @property
    def in_gram_form(self) -> bool:
        return self._sum is None

    def update(self, chunk: torch.Tensor | np.ndarray) -> None:
        x = normalize_rows(chunk)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"feature dimension {x.shape[-1]} does not match {self.dim}")
        if self._sum is None and not gram_form(self.n + x.shape[0], self.dim, self.form):
            self._sum = torch.zeros(self.dim, self.dim, dtype=torch.float64)
            for rows in self._rows:  # the chunks so far, summed as the moment form would have
                self._sum += (rows.T @ rows).to(torch.float64)
            self._rows, self._gram = [], torch.zeros(0, 0, dtype=torch.float64)
        # A non-finite value makes its row's (Gram) or its column's (moment) diagonal entry non-finite:
        # the chunk is refused before it touches the state.
        if self._sum is not None:
            product = (x.T @ x).to(torch.float64)
            _check_finite(product, x)
            self._sum += product
        else:
            block = (x @ x.T).to(torch.float64)
            _check_finite(block, x)
            self._grow_gram(x, block)
            self._rows.append(x)
        self.n += x.shape[0]

    def _grow_gram(self, x: torch.Tensor, block: torch.Tensor) -> None:
        """Border the Gram matrix K of the n rows R so far with x's rows: [[K, R xᵀ], [x Rᵀ, block = x xᵀ]]."""
        old, new = self.n, self.n + x.shape[0]
        if new > self._gram.shape[0]:  # capacity doubles (auto: up to d − 1 rows), so growing costs O(n²) in all
            side = max(new, 2 * self._gram.shape[0])
            side = side if self.form == "gram" else min(side, self.dim - 1)
            grown = torch.zeros(side, side, dtype=torch.float64)
            grown[:old, :old] = self._gram[:old, :old]
            self._gram = grown
        start = 0
        for rows in self._rows:
            dtype = torch.promote_types(rows.dtype, x.dtype)
            cross = (rows.to(dtype) @ x.to(dtype).T).to(torch.float64)
            self._gram[start:start + rows.shape[0], old:new] = cross
            self._gram[old:new, start:start + rows.shape[0]] = cross.T
            start += rows.shape[0]
        self._gram[old:new, old:new] = block

    def copy(self) -> SecondMoment:
        """An independent moment of the same rows (the kept rows are shared: they are never written)."""
        twin = SecondMoment(self.dim, self.form)
        twin.n, twin._rows = self.n, list(self._rows)
        twin._gram = self._gram[:self.n, :self.n].clone() if self._sum is None else twin._gram
        twin._sum = None if self._sum is None else self._sum.clone()
        return twin

    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of K/n (Gram form: n of them) or S/n (moment form: d), float64, summing to 1."""
        if self.n == 0:
            raise ValueError("no samples")
        matrix = self._gram[:self.n, :self.n] if self._sum is None else self._sum
        # torch's LAPACK, not numpy's: switching between torch's and numpy's thread pools on every call
        # costs more than a small decomposition where cores are few.
        return torch.linalg.eigvalsh(matrix / self.n).numpy()

    def score(self) -> float:
        return vendi_from_eigenvalues(self.eigenvalues())


def _check_finite(product: torch.Tensor, rows: torch.Tensor) -> None:
    """ValueError naming the first non-finite row of `rows` when `product`'s diagonal is not finite."""
    if not bool(torch.isfinite(product.diagonal()).all()):
        bad = int((~torch.isfinite(rows).all(dim=1)).nonzero()[0])
        raise ValueError(f"feature row {bad} is not finite")


def gvendi(features: torch.Tensor | np.ndarray, chunk_rows: int = 65536, form: str = "auto") -> float:
    """G-Vendi of a feature matrix (n × d), rows normalized here: the Gram form when n < d, else the
    moment form (module docstring; `form` forces one)."""
    return gvendi_of_chunks(_chunks(features, chunk_rows), dim=features.shape[1], form=form)


def gvendi_of_chunks(chunks: Iterable[torch.Tensor | np.ndarray], dim: int, form: str = "auto") -> float:
    """G-Vendi of rows that arrive in chunks (e.g. Parquet row groups), by `SecondMoment`."""
    moment = SecondMoment(dim, form)
    for chunk in chunks:
        moment.update(chunk)
    return moment.score()


def _chunks(features: torch.Tensor | np.ndarray, rows: int):
    for start in range(0, features.shape[0], rows):
        yield features[start:start + rows]


def gvendi_of_parquet(path: str | Path, chunk_rows: int = PARQUET_CHUNK_ROWS) -> float:
    """G-Vendi of the `feature` column of a features Parquet file (`prism features`), streamed.

    Same score as `gvendi(read_features(path)[1])`: rows are normalized here (stored features are
    unit already) and go through `SecondMoment`, so a file of n < d rows is scored in the Gram form
    (eigenvalues of XXᵀ/n, O(n²d + n³)) and a larger one in the moment form, S = Σ_chunks XᵀX / n
    accumulated in float64 from float32 chunk products (O(nd² + d³)); either way

        G-Vendi = exp( −Σ_i λ_i log λ_i ),   λ = the non-zero eigenvalues of XXᵀ/n = those of S.

    Memory is bounded by one chunk plus d × d, whatever n is: the file is read batch by batch with
    buffered, not pre-buffered, column reads, so a row group larger than the chunk (`write_features`
    writes up to 2²⁰ rows in one) is never loaded whole. One chunk costs its float32 values
    (chunk_rows × d × 4 bytes, zero-copy from Arrow), Arrow's decoding scratch (the list's
    definition/repetition levels, about as much again) and the normalized float32 copy; on top come
    d × d float32 + float64 for the products, or, while fewer than d rows have arrived, those rows and
    their Gram matrix (less than d × d each). `benchmarks/gvendi_stream.py` measures the peak.
    """
    dim = feature_dim(path)
    moment = SecondMoment(dim)
    for start, chunk in feature_chunks(path, chunk_rows):
        try:
            moment.update(chunk)
        except ValueError:
            _raise_bad_rows(path, start, chunk)
    if moment.n == 0:
        raise InputError(path, "no feature rows", field="feature")
    return moment.score()


def _raise_bad_rows(path: str | Path, start: int, chunk: np.ndarray) -> None:
    """The first row of `chunk` that is all zeros or not finite, as an InputError (1-based row)."""
    finite = np.isfinite(chunk).all(axis=1)
    if not finite.all():
        raise InputError(path, "non-finite value", line=start + int(np.flatnonzero(~finite)[0]) + 1,
                         field="feature")
    zero = ~chunk.any(axis=1)
    if zero.any():
        raise InputError(path, "all-zero row (no direction)", line=start + int(np.flatnonzero(zero)[0]) + 1,
                         field="feature")
    raise InputError(path, f"non-finite values in rows {start + 1}..{start + len(chunk)}", field="feature")
