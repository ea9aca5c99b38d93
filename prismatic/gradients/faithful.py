"""The faithful path: per-sample gradient features with one backward per sample, as in the paper's code.

For a sample (prompt, response), the loss is the mean next-token cross-entropy over its assistant
tokens A (the response and the end-of-turn token that closes it; see chat.py),

    L(θ) = −(1/|A|) Σ_{t∈A} log p_θ(x_t | x_<t)        (nats per token).

Its gradient g = ∇_θ L over *all* trainable parameters (a tied embedding counted once) is flattened in
`named_parameters` order (D numbers, D = the parameter count), projected with the seeded Rademacher
matrix P ∈ {±1}^{d×D} of projection.py,

    y = P g / √d,        feature = y / ‖y‖₂        (d numbers, unit L2 norm),

so inner products of features estimate the gradients' cosines. See docs/formulas.md for the
derivation; fast.py computes the same features up to projection noise without forming g.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from tqdm import tqdm

from prismatic.errors import PrismError
from prismatic.gradients.chat import IGNORE, EncodedChat, encode_chat
from prismatic.gradients.featureset import FeatureSet, Shard, shard_units
from prismatic.gradients.projection import RademacherProjection
from prismatic.metrics.vendi import normalize_rows


def assistant_loss(model, chat: EncodedChat) -> torch.Tensor:
    """Mean next-token cross-entropy over the assistant tokens (float32)."""
    device = next(model.parameters()).device
    ids = chat.input_ids.to(device)
    logits = model(input_ids=ids[None]).logits[0, :-1].float()
    return F.cross_entropy(logits, chat.labels[1:].to(device), ignore_index=IGNORE)


def flat_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable parameters in a fixed order; a tied weight appears once."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def per_sample_gradient(model, chat: EncodedChat, out: torch.Tensor | None = None) -> torch.Tensor:
    """∇_θ of `assistant_loss` for one sample, flattened over `flat_parameters` (one backward)."""
    params = [p for _, p in flat_parameters(model)]
    model.zero_grad(set_to_none=True)
    assistant_loss(model, chat).backward()
    total = sum(p.numel() for p in params)
    if out is None:
        out = torch.empty(total, dtype=params[0].dtype, device=params[0].device)
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is None:
            out[offset:offset + n].zero_()
        else:
            out[offset:offset + n].copy_(p.grad.reshape(-1))
        offset += n
    model.zero_grad(set_to_none=True)
    return out


def faithful_features(model, tokenizer, samples: pl.DataFrame, *, dim: int = 1024, seed: int = 0,
                      max_tokens: int | None = None, projection_dtype: torch.dtype = torch.bfloat16,
                      buffer_bytes: float = 8e9, progress: bool = True, shard: Shard | None = None) -> FeatureSet:
    """Faithful G-Vendi features of `samples` (columns id, prompt, response).

    Flattened gradients are buffered (as many as fit in `buffer_bytes`, in `projection_dtype`) and
    projected together, so each block of random signs is generated once per buffer, not per sample.
    `shard` = (index, count): only that shard's buffers (`shard_units`), the rest of the rows left out.
    """
    started = time.perf_counter()
    n_params = sum(p.numel() for _, p in flat_parameters(model))
    projection = RademacherProjection(in_dim=n_params, out_dim=dim, seed=seed)
    device = next(model.parameters()).device
    itemsize = torch.empty(0, dtype=projection_dtype).element_size()
    per_buffer = max(1, min(len(samples), int(buffer_bytes // (n_params * itemsize))))
    buffer = torch.empty(per_buffer, n_params, dtype=projection_dtype, device=device)
    batches = list(_batches(samples, per_buffer))
    batches = [batches[unit] for unit in shard_units([len(batch) for batch in batches], shard)]
    samples = pl.concat(batches) if batches else samples.head(0)

    rows, n_tokens, truncated = [], [], []
    bar = tqdm(total=len(samples), desc="gradient features (faithful)", unit="sample", disable=not progress)
    for batch in batches:
        for i, row in enumerate(batch.iter_rows(named=True)):
            try:
                chat = encode_chat(tokenizer, row["prompt"], row["response"], max_tokens)
            except PrismError as exc:
                raise PrismError(f"sample {row['id']!r}: {exc}") from None
            per_sample_gradient(model, chat, out=buffer[i])
            n_tokens.append(chat.n_tokens)
            truncated.append(chat.truncated)
            bar.update(1)
        rows.append(normalize_rows(projection.project(buffer[:len(batch)])))
    bar.close()
    meta = {"mode": "faithful", "dim": dim, "projection": projection.describe(),
            "model_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "projection_dtype": str(projection_dtype).removeprefix("torch."), "max_tokens": max_tokens}
    features = torch.cat(rows).numpy() if rows else np.zeros((0, dim), dtype=np.float32)
    return FeatureSet(ids=samples["id"].to_list(), features=features, n_tokens=n_tokens,
                      truncated=truncated, meta=meta, seconds=time.perf_counter() - started)


def _batches(frame: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.slice(start, size)
