"""Baseline diversity metrics of a list of texts (docs/formulas.md#text-metrics): small pure functions.

Words are `tokenize`'s tokens: lower-cased runs of letters/digits/underscore, and every other
non-space character on its own (`"It's 3.5$"` → `it ' s 3 . 5 $`). An n-gram never crosses from one
text into the next. Direction: distinct-n, n-gram Vendi and embedding Vendi grow with diversity;
compression ratio and self-repetition shrink with it; proxy NLL is not a diversity measure (it says
how surprising the data is to the proxy LM, not how varied).
"""

from __future__ import annotations

import gzip
import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from scipy import sparse

from prismatic.gradients.chat import IGNORE, encode_chat
from prismatic.metrics.vendi import gvendi, vendi_from_eigenvalues

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (see the module docstring)."""
    return _TOKEN.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The len(tokens) − n + 1 contiguous n-grams of one text (none when it is shorter than n)."""
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_ratios(texts: Sequence[str], max_n: int = 4) -> dict[int, float]:
    """distinct-n for each n = 1..max_n: |unique n-grams of the corpus| / |n-grams of the corpus|.

    Orders with no n-gram at all (every text shorter than n) are left out.
    """
    tokenized = [tokenize(text) for text in texts]
    ratios = {}
    for n in range(1, max_n + 1):
        grams = [gram for tokens in tokenized for gram in ngrams(tokens, n)]
        if grams:
            ratios[n] = len(set(grams)) / len(grams)
    return ratios


def distinct_n(texts: Sequence[str], max_n: int = 4) -> float:
    """Mean over n = 1..max_n of distinct-n = unique n-grams / total n-grams (Li et al., 2016)."""
    ratios = distinct_ratios(texts, max_n)
    if not ratios:
        raise ValueError("no text has a single token")
    return sum(ratios.values()) / len(ratios)


def vendi_of_rows(rows: sparse.spmatrix | np.ndarray) -> float:
    """Vendi Score of the cosine kernel of the rows of an N × V matrix X.

    With X̂ the L2-normalized rows, Vendi = exp(−Σ μ log μ), μ = eig(X̂X̂ᵀ / N). The smaller of X̂X̂ᵀ
    (N × N) and X̂ᵀX̂ (V × V) is decomposed; they share their non-zero eigenvalues. Zero rows (a text
    with no n-gram of this order) all get one extra shared coordinate: an empty profile is one
    profile, similar to the other empty ones and to nothing else.
    """
    x = sparse.csr_matrix(rows, dtype=np.float64)
    n = x.shape[0]
    empty = np.asarray(x.multiply(x).sum(axis=1)).ravel() == 0
    if empty.any():
        x = sparse.hstack([x, sparse.csr_matrix(empty.astype(np.float64)[:, None])]).tocsr()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x = (sparse.diags(1.0 / norms) @ x).tocsr()
    gram = (x @ x.T) if n <= x.shape[1] else (x.T @ x)
    return vendi_from_eigenvalues(np.linalg.eigvalsh(gram.toarray() / n))


def ngram_count_rows(texts: Sequence[str], n: int) -> sparse.csr_matrix:
    """Rows = texts, columns = the corpus's distinct n-grams, entries = counts."""
    vocabulary: dict[tuple[str, ...], int] = {}
    data, indices, indptr = [], [], [0]
    for text in texts:
        counts = Counter(ngrams(tokenize(text), n))
        for gram, count in counts.items():
            indices.append(vocabulary.setdefault(gram, len(vocabulary)))
            data.append(count)
        indptr.append(len(indices))
    return sparse.csr_matrix((np.asarray(data, dtype=np.float64), indices, indptr),
                             shape=(len(texts), len(vocabulary)))


def ngram_vendi_by_order(texts: Sequence[str], max_n: int = 4) -> dict[int, float]:
    """n-gram Vendi for each n = 1..max_n: `vendi_of_rows` of the texts' n-gram count vectors."""
    return {n: vendi_of_rows(ngram_count_rows(texts, n)) for n in range(1, max_n + 1)}


def ngram_vendi(texts: Sequence[str], max_n: int = 4) -> float:
    """Mean over n = 1..max_n of the Vendi Score of the cosine kernel K_ij = cos(c_i, c_j) of n-gram
    count vectors c_i: exp(−Σ μ log μ), μ = eig(K / N). 1 for identical texts, N for texts sharing
    no n-gram."""
    scores = ngram_vendi_by_order(texts, max_n)
    return sum(scores.values()) / len(scores)


def embedding_vendi(embeddings: np.ndarray) -> float:
    """Vendi Score of the cosine kernel of sentence embeddings E (N × d): exp(−Σ μ log μ),
    μ = eig(ÊÊᵀ / N) with Ê the unit rows, computed as G-Vendi (N × N form when N < d, else d × d)."""
    return gvendi(np.asarray(embeddings, dtype=np.float64))


def compression_ratio(texts: Sequence[str]) -> float:
    """|B| / |gzip(B)| where B is the UTF-8 bytes of the texts joined by newlines (gzip level 9, no
    timestamp, so the value is reproducible). Redundant corpora compress better: higher = less diverse."""
    data = "\n".join(texts).encode("utf-8")
    if not data:
        raise ValueError("no text to compress")
    return len(data) / len(gzip.compress(data, compresslevel=9, mtime=0))


def self_repetition(texts: Sequence[str], n: int = 4) -> float:
    """Self-repetition score (Salkar et al., 2022; Shaib et al., 2024): with G_i the distinct n-grams
    of text i and df(g) the number of texts whose n-grams include g,

        SR = (1/N) Σ_i log(1 + Σ_{g ∈ G_i} (df(g) − 1)),

    i.e. how many of each text's n-grams re-occur in other texts. 0 when no n-gram is shared;
    higher = less diverse."""
    if not texts:
        raise ValueError("no texts")
    grams = [set(ngrams(tokenize(text), n)) for text in texts]
    df = Counter(gram for text_grams in grams for gram in text_grams)
    return sum(math.log1p(sum(df[g] - 1 for g in text_grams)) for text_grams in grams) / len(texts)


@torch.inference_mode()
def proxy_nll_by_sample(model, tokenizer, samples: pl.DataFrame, max_tokens: int | None = None,
                        batch_size: int = 16) -> list[float]:
    """Per sample (in order), the mean next-token NLL of its assistant tokens (`assistant_loss`).

    Chats are sorted by length and run `batch_size` at a time, right-padded: under causal attention a
    padded tail changes no logit of the tokens before it, so no attention mask is needed.
    """
    chats = [encode_chat(tokenizer, row["prompt"], row["response"], max_tokens)
             for row in samples.iter_rows(named=True)]
    device = next(model.parameters()).device
    order = sorted(range(len(chats)), key=lambda i: chats[i].n_tokens)
    losses: dict[int, float] = {}
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(chats[i].n_tokens for i in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, :chats[i].n_tokens] = chats[i].input_ids
            labels[row, :chats[i].n_tokens] = chats[i].labels
        logits = model(input_ids=ids.to(device)).logits[:, :-1].float()
        targets = labels[:, 1:].to(device)
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
        per_sample = nll.sum(dim=1) / (targets != IGNORE).sum(dim=1)
        losses.update(zip(batch, per_sample.tolist()))
    return [losses[i] for i in range(len(chats))]


def proxy_nll(model, tokenizer, samples: pl.DataFrame, max_tokens: int | None = None) -> float:
    """(1/N) Σ_i −(1/|A_i|) Σ_{t∈A_i} log p(x_t | x_<t): mean over samples of the mean assistant-token
    negative log-likelihood under the proxy LM (nats). A quality/familiarity reading, not diversity."""
    values = proxy_nll_by_sample(model, tokenizer, samples, max_tokens)
    if not values:
        raise ValueError("no samples")
    return sum(values) / len(values)
