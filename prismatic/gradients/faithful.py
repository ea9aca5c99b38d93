"""Per-sample gradient features of a proxy LM (the faithful path of DESIGN §7).

For a sample (prompt, response) the chat template renders user=prompt, assistant=response; the
loss is the mean next-token cross-entropy over the assistant tokens only,

    L(θ) = −(1/|A|) Σ_{t∈A} log p_θ(x_t | x_<t),

where A is the response's tokens plus the end-of-turn token that closes it (everything before the
assistant content is masked). Its gradient g = ∇_θ L over *all* parameters (a tied embedding
counted once) is flattened in `named_parameters` order, projected with a seeded Rademacher matrix
to d dims (÷√d) and L2-normalized: one backward per sample, as in the paper's code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from tqdm import tqdm

from prismatic.errors import PrismError
from prismatic.gradients.projection import RademacherProjection
from prismatic.metrics.vendi import normalize_rows

IGNORE = -100


@dataclass
class EncodedChat:
    """Token ids of the rendered chat and the next-token labels (IGNORE outside the assistant)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    truncated: bool

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def n_assistant(self) -> int:
        return int((self.labels != IGNORE).sum())


def encode_chat(tokenizer, prompt: str, response: str, max_tokens: int | None = None) -> EncodedChat:
    """Render user=prompt, assistant=response and mark the assistant tokens.

    The assistant span is found in characters (rendered text after the generation prompt, through
    the end-of-turn token) and mapped to tokens with the tokenizer's offsets, so it is exact for
    any template that copies the content verbatim. With `max_tokens`, the tail is cut and
    `truncated` set; a sample with no assistant token left is refused.
    """
    user = [{"role": "user", "content": prompt}]
    prefix = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prefix) or full[len(prefix):len(prefix) + len(response)] != response:
        raise PrismError("the chat template does not render the assistant content after the generation "
                         "prompt; assistant-only loss needs a template that does")
    start = len(prefix)
    stop = start + len(response)
    end_of_turn = tokenizer.eos_token or ""
    if end_of_turn and full.startswith(end_of_turn, stop):
        stop += len(end_of_turn)
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor(encoding["input_ids"], dtype=torch.long)
    in_span = torch.tensor([end > start and begin < stop for begin, end in encoding["offset_mapping"]])
    labels = torch.where(in_span, ids, torch.full_like(ids, IGNORE))
    truncated = max_tokens is not None and ids.numel() > max_tokens
    if truncated:
        ids, labels = ids[:max_tokens], labels[:max_tokens]
    if not bool((labels[1:] != IGNORE).any()):
        raise PrismError("no assistant token is left to score (empty response, or cut by max_tokens)")
    return EncodedChat(ids, labels, truncated)


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


@dataclass
class FeatureSet:
    """Unit-row features beside their sample ids, with what produced them."""

    ids: list[str]
    features: np.ndarray  # n × d float32, unit rows
    n_tokens: list[int]
    truncated: list[bool]
    meta: dict = field(default_factory=dict)
    seconds: float = 0.0


Shard = tuple[int, int]
"""(index, count): the index-th of `count` parts of a data set's features (see `shard_units`)."""


def shard_units(weights: list[int], shard: Shard | None) -> range:
    """The units (batches) of one shard: a contiguous run of the data set's batch plan.

    The plan is cut where the cumulative weight (packed tokens, samples) first reaches k/count of
    the total, k = 1..count-1, so shards carry about equal work, every unit lands in exactly one
    shard, and each shard computes its batches exactly as the unsharded run would (same members,
    same packing), which is what makes merged features equal the unsharded ones. Shards beyond the
    number of units are empty.
    """
    if shard is None:
        return range(len(weights))
    index, count = shard
    if not 0 <= index < count:
        raise PrismError(f"shard {index} of {count}: expected 0 <= index < count")
    total, cuts, running = sum(weights), [0], 0
    for position, weight in enumerate(weights):
        running += weight
        while len(cuts) < count and running * count >= total * len(cuts):
            cuts.append(position + 1)
    cuts += [len(weights)] * (count + 1 - len(cuts))
    return range(cuts[index], cuts[index + 1])


def feature_table(result: FeatureSet) -> tuple[pl.DataFrame, dict]:
    """The `gradient_features` rows of a non-empty FeatureSet whose meta names its proxy, and the
    projection recorded beside them (its meta's projection without the per-layer segments)."""
    n, dim = len(result.ids), result.features.shape[1]
    frame = pl.DataFrame({
        "id": result.ids,
        "feature": pl.Series("feature", result.features, dtype=pl.Array(pl.Float32, dim)),
        "proxy": [result.meta["proxy"]] * n, "mode": [result.meta["mode"]] * n, "dim": [dim] * n,
        "n_tokens": result.n_tokens, "truncated": result.truncated,
    })
    return frame, {k: v for k, v in result.meta["projection"].items() if k != "segments"}


def merge_feature_sets(parts: list[FeatureSet], ids: list[str]) -> FeatureSet:
    """The features of every shard of one data set, as one FeatureSet in the data set's order `ids`.

    Every id must come from exactly one shard, and every shard must share one projection (meta).
    `seconds` is the sum over shards (compute time, not wall time).
    """
    produced = [i for part in parts for i in part.ids]
    if sorted(produced) != sorted(ids) or len(set(produced)) != len(produced):
        raise PrismError(f"feature shards cover {len(produced)} rows ({len(set(produced))} distinct) for "
                         f"{len(ids)} samples: a shard is missing or overlaps another")
    metas = {repr(sorted(part.meta.items())) for part in parts if part.ids}
    if len(metas) > 1:
        raise PrismError("feature shards were computed with different settings; recompute every shard")
    where = {i: (k, row) for k, part in enumerate(parts) for row, i in enumerate(part.ids)}
    order = [where[i] for i in ids]
    dim = next((part.features.shape[1] for part in parts if part.ids), parts[0].features.shape[1] if parts else 0)
    features = np.stack([parts[k].features[row] for k, row in order]) if order else np.zeros((0, dim), np.float32)
    return FeatureSet(ids=list(ids), features=features, n_tokens=[parts[k].n_tokens[row] for k, row in order],
                      truncated=[parts[k].truncated[row] for k, row in order],
                      meta=next((part.meta for part in parts if part.ids), parts[0].meta if parts else {}),
                      seconds=sum(part.seconds for part in parts))


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
