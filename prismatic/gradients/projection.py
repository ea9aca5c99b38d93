"""Seeded dense Rademacher projection R^D → R^d, generated block by block.

    y = P g / √d,   P ∈ {−1, +1}^{d × D} with i.i.d. fair signs.

For any g, h: E[⟨y_g, y_h⟩] = ⟨g, h⟩ (Johnson–Lindenstrauss), and relative distortion shrinks as
O(1/√d). The matrix is defined by (seed, D, d) alone: input coordinates come in fixed chunks of
`CHUNK` = 4096; chunk c's signs are the bits of a PCG64 stream seeded with (seed, c), so any block
size, device or batch gives the same projection. The full d × D matrix is never held: a block of
`block_coords` × d signs at a time (bf16: 2 bytes a sign). See docs/formulas.md for the derivation.

Signs are made from random bytes by writing each bit into a float's sign bit (no per-entry random
draw, no multiply) in a reused buffer, chunks in parallel threads; its speed against `torch.randint` is in
benchmarks/results/measurements.md ("From the code").
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

CHUNK = 4096
KIND = "rademacher-pcg64-v1"

_SIGN_BITS = {  # (integer view, shift of the sign bit, bit pattern of +1.0)
    torch.bfloat16: (np.int16, 15, 0x3F80),
    torch.float32: (np.int32, 31, 0x3F800000),
    torch.float64: (np.int64, 63, 0x3FF0000000000000),
}
_POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))


def _fill_chunk_signs(seed: int, chunk: int, dtype: torch.dtype, out: np.ndarray) -> None:
    """Write one chunk's signs into `out` (n_coords × out_dim, `dtype`'s integer view).

    Bit k of the chunk's PCG64 byte stream is entry k (row-major, least significant bit first);
    bit 1 means −1. Each entry is +1.0's bit pattern with the sign bit set from its random bit.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, chunk])))
    bits = np.unpackbits(np.frombuffer(rng.bytes(out.size // 8), dtype=np.uint8), bitorder="little")
    view, shift, one = _SIGN_BITS[dtype]
    flat = out.reshape(-1)
    np.copyto(flat, bits, casting="unsafe")
    flat <<= shift
    flat |= np.array(one, dtype=np.uint64).astype(view)


@dataclass
class RademacherProjection:
    """The projection of `in_dim` coordinates to `out_dim`, fixed by `seed`.

    `block_coords` only trades memory for speed; it does not change the result.
    """

    in_dim: int
    out_dim: int = 1024
    seed: int = 0
    block_coords: int = 8 * CHUNK
    _buffers: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.out_dim % 8:
            raise ValueError(f"projection dim must be a multiple of 8, got {self.out_dim}")
        if self.block_coords % CHUNK:
            raise ValueError(f"block_coords must be a multiple of {CHUNK}")

    def describe(self) -> dict:
        """What identifies this projection; stored with every feature file."""
        return {"kind": KIND, "seed": self.seed, "in_dim": self.in_dim, "out_dim": self.out_dim,
                "chunk": CHUNK}

    def signs(self, start: int, stop: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows [start, stop) of Pᵀ: a (stop − start) × d matrix of ±1 (a fresh tensor)."""
        return self._block(start, stop, dtype).clone()

    def _block(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Like `signs`, but a view of a reused buffer: valid until the next call."""
        if start % CHUNK:
            raise ValueError(f"start {start} is not a multiple of {CHUNK}")
        if dtype not in _SIGN_BITS:
            return self._block(start, stop, torch.float32).to(dtype)
        stop = min(stop, self.in_dim)
        view = _SIGN_BITS[dtype][0]
        rows = max(stop - start, CHUNK)
        if dtype not in self._buffers or self._buffers[dtype].shape[0] < rows:
            self._buffers[dtype] = np.empty((max(rows, self.block_coords), self.out_dim), dtype=view)
        buffer = self._buffers[dtype]
        jobs = []
        for chunk in range(start // CHUNK, math.ceil(stop / CHUNK)):
            lo = chunk * CHUNK - start
            hi = min(lo + CHUNK, stop - start)
            jobs.append(_POOL.submit(_fill_chunk_signs, self.seed, chunk, dtype, buffer[lo:hi]))
        for job in jobs:
            job.result()
        return torch.from_numpy(buffer[:stop - start]).view(dtype)

    def project(self, vectors: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """y = vectors @ Pᵀ / √d for a batch (n × D); returns float32 n × d.

        `dtype` is the multiply dtype (default: the input's); each block's product is added to a
        float32 accumulator.
        """
        if vectors.shape[-1] != self.in_dim:
            raise ValueError(f"expected vectors of length {self.in_dim}, got {vectors.shape[-1]}")
        out = torch.zeros(vectors.shape[0], self.out_dim, dtype=torch.float32, device=vectors.device)
        for start in range(0, self.in_dim, self.block_coords):
            stop = min(start + self.block_coords, self.in_dim)
            out += self.project_columns(vectors[:, start:stop], start, dtype)
        return out / math.sqrt(self.out_dim)

    def project_columns(self, columns: torch.Tensor, start: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Coordinates [start, start + n) of a batch (n_rows × n): their share of vectors @ Pᵀ, float32.

        Not yet ÷ √d: summed over a partition of the coordinates and divided by √d, the shares are
        `project` (for data that arrives in column slices, e.g. read from a memory map). `start` must
        be a multiple of `CHUNK`; `dtype` as in `project`.
        """
        dtype = dtype or columns.dtype
        block = self._block(start, start + columns.shape[1], dtype).to(columns.device, non_blocking=True)
        return (columns.to(dtype) @ block).float()


SKETCH_KIND = "countsketch-pcg64-v1"


@dataclass
class CountSketch:
    """Seeded sparse Johnson–Lindenstrauss projection R^D → R^d with one nonzero per input coordinate.

        y_b = Σ_{j : h(j) = b} s(j) x_j,   h(j) ∈ {0, …, d−1} uniform,  s(j) ∈ {−1, +1} fair,

    i.e. y = S x with S ∈ {−1, 0, +1}^{d × D} having exactly one ±1 per column (CountSketch; the
    sparse JL transform with s = 1). For any x, z: E[⟨Sx, Sz⟩] = ⟨x, z⟩ and
    Var[⟨Sx, Sz⟩] = (‖x‖²‖z‖² + ⟨x, z⟩² − 2 Σ_j x_j² z_j²)/d, the variance of the dense Rademacher
    projection Px/√d, at O(D) per vector instead of O(D·d). No ÷√d: ‖Sx‖² already estimates ‖x‖².

    h and s are drawn once from a PCG64 stream seeded with (seed, D, d): the sketch is defined by
    (seed, D, d) alone, on any device. Held as D int64 buckets and D float32 signs: 12·D bytes.
    """

    in_dim: int
    out_dim: int = 1024
    seed: int = 0

    def __post_init__(self):
        if self.out_dim < 1 or self.in_dim < 1:
            raise ValueError(f"CountSketch needs in_dim, out_dim ≥ 1, got {self.in_dim}, {self.out_dim}")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self.in_dim, self.out_dim])))
        self.buckets = torch.from_numpy(rng.integers(0, self.out_dim, size=self.in_dim, dtype=np.int64))
        self.signs = torch.from_numpy(1.0 - 2.0 * rng.integers(0, 2, size=self.in_dim).astype(np.float32))
        self._device = torch.device("cpu")

    def describe(self) -> dict:
        """What identifies this projection; stored with every feature file."""
        return {"kind": SKETCH_KIND, "seed": self.seed, "in_dim": self.in_dim, "out_dim": self.out_dim}

    def matrix(self) -> torch.Tensor:
        """S as a dense d × D float32 matrix (for tests and small inputs only)."""
        dense = torch.zeros(self.out_dim, self.in_dim)
        dense[self.buckets, torch.arange(self.in_dim)] = self.signs
        return dense

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """y = S x for a batch (n × D): one `index_add_` scatter of the signed coordinates; float32 n × d."""
        if vectors.shape[-1] != self.in_dim:
            raise ValueError(f"expected vectors of length {self.in_dim}, got {vectors.shape[-1]}")
        if vectors.device != self._device:
            self.buckets, self.signs = self.buckets.to(vectors.device), self.signs.to(vectors.device)
            self._device = vectors.device
        out = torch.zeros(vectors.shape[0], self.out_dim, dtype=torch.float32, device=vectors.device)
        return out.index_add_(1, self.buckets, vectors.float() * self.signs)
