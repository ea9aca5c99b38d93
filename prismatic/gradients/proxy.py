"""Gradient features of a data set under the configured proxy, in either mode.

One entry point for the CLI and the Dagster asset (`compute_features`): load the proxy
(`load_proxy`), check every chat's length in tokens against the proxy's context
(`features.overlong`), pick the path (`fast`: batched factored projection, fast.py; `faithful`: the
paper code's one backward per sample, faithful.py), run one shard or all, and return a FeatureSet
of n × d float32 unit rows (featureset.py). Either path's feature is the L2-normalized projection
P g / √d of the gradient g of the sample's mean assistant-token loss; see docs/formulas.md.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch

from prismatic.config import DataFields, FeaturesConfig
from prismatic.data.chats import prompt_chat, sample_chat
from prismatic.data.samples import LINE_COLUMN
from prismatic.errors import InputError, PrismError
from prismatic.faults import fault_point
from prismatic.gradients.faithful import faithful_features
from prismatic.gradients.fast import FastFeaturizer
from prismatic.gradients.featureset import FeatureSet, Shard
from prismatic.models import load_causal_lm, resolve_model


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass(frozen=True)
class Proxy:
    """The proxy LM, loaded: a causal LM in eval mode on its device (`features.device`, weights in
    `features.model_dtype`), its tokenizer (with a chat template), and `name`, the folder or Hugging Face id
    it was loaded from (recorded with every feature set as its `proxy`)."""

    model: Any
    tokenizer: Any
    name: str


def load_proxy(config: FeaturesConfig, models_dir: Path) -> Proxy:
    """The proxy of `features.proxy` (a folder under `models_dir`, a path or a Hugging Face id)."""
    name = resolve_model(config.proxy, models_dir)
    device = pick_device(config.device)
    print(f"loading proxy {name} on {device}", file=sys.stderr)
    model, tokenizer = load_causal_lm(name, getattr(torch, config.model_dtype), device)
    return Proxy(model, tokenizer, name)


def compute_features(samples: pl.DataFrame, config: FeaturesConfig, models_dir: Path, *, proxy: Proxy | None = None,
                     progress: bool = True, source: Path | None = None, fields: DataFields | None = None,
                     shard: Shard | None = None) -> tuple[FeatureSet, str]:
    """Features of `samples` (id, prompt, response) and the proxy's name; `proxy`: a loaded one to reuse (None:
    load `config.proxy`).

    `source` (the file the samples came from, with `LINE_COLUMN` in `samples`) and `fields` (its
    field names) make an overlong sample an `InputError` naming file, line and field.
    `shard` = (index, count): only that shard's rows (every shard reads all of `samples` to plan the
    batches; `merge_feature_sets` of all shards equals the unsharded result).
    """
    proxy = proxy or load_proxy(config, models_dir)
    max_tokens = fit_context(samples, proxy.tokenizer, context_length(proxy.model), config, source=source,
                             fields=fields)
    fault_point("features")
    if config.mode == "fast":
        featurizer = FastFeaturizer(proxy.model, proxy.tokenizer, config, max_tokens=max_tokens)
        return featurizer.features(samples, progress=progress, shard=shard), proxy.name
    result = faithful_features(proxy.model, proxy.tokenizer, samples, dim=config.dim, seed=config.seed,
                               max_tokens=max_tokens,
                               projection_dtype=getattr(torch, config.projection_dtype),
                               buffer_bytes=config.gradient_buffer_gb * 1e9, progress=progress, shard=shard)
    return result, proxy.name


def context_length(model) -> int | None:
    """The proxy's context (`max_position_embeddings`), or None when its config does not say."""
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def fit_context(samples: pl.DataFrame, tokenizer, context: int | None, config: FeaturesConfig, *,
                source: Path | None = None, fields: DataFields | None = None) -> int | None:
    """The `max_tokens` to featurize with, once every chat was checked against the proxy's context.

    A chat within `config.max_tokens` (when that is within the context) or within the context
    passes. A longer one is refused (`overlong: refuse`) or cut to the context (`overlong:
    truncate`, recorded per row as `truncated`); a prompt that alone fills the context is refused
    either way (no response token would be left to score).
    """
    if context is None or (config.max_tokens is not None and config.max_tokens <= context):
        return config.max_tokens
    fields = fields or DataFields()
    for row in samples.iter_rows(named=True):
        prompt, response = row["prompt"], row["response"]
        if len(prompt.encode()) + len(response.encode()) < context // 2:
            continue  # a token covers at least one byte; the template adds far fewer than context/2 tokens
        n_chat = _n_tokens(tokenizer, sample_chat(prompt, response))
        if n_chat <= context:
            continue
        n_prompt = _n_tokens(tokenizer, prompt_chat(prompt), generation_prompt=True)
        if n_prompt >= context:
            field, message = fields.prompt_field, (f"the prompt of sample {row['id']!r} alone is {n_prompt} tokens; "
                                                   f"the proxy's context is {context}, so no response token is left "
                                                   "to score")
        elif config.overlong == "refuse":
            field, message = fields.response_field, (f"sample {row['id']!r} is {n_chat} tokens as a chat, more than "
                                                     f"the proxy's context of {context} (features.overlong: truncate "
                                                     "cuts such samples and records it)")
        else:
            continue
        if source is not None:
            raise InputError(source, message, line=row.get(LINE_COLUMN), field=field)
        raise PrismError(f"field '{field}': {message}")
    return context if config.overlong == "truncate" else config.max_tokens


def _n_tokens(tokenizer, messages: list[dict], generation_prompt: bool = False) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
