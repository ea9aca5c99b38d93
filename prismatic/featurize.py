"""Gradient features of a data set under the configured proxy, in either mode.

One entry point for the CLI and the Dagster asset: load the proxy, pick the path (`fast`: batched
factored projection, `faithful`: the paper code's one backward per sample), return a FeatureSet.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import torch

from prismatic.config import FeaturesConfig
from prismatic.fast_gradients import FastFeaturizer
from prismatic.gradients import FeatureSet, faithful_features
from prismatic.models import load_causal_lm, resolve_model


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def load_proxy(config: FeaturesConfig, models_dir: Path):
    """(model, tokenizer, resolved name) of the configured proxy."""
    proxy = resolve_model(config.proxy, models_dir)
    device = pick_device(config.device)
    print(f"loading proxy {proxy} on {device}", file=sys.stderr)
    model, tokenizer = load_causal_lm(proxy, getattr(torch, config.model_dtype), device)
    return model, tokenizer, proxy


def compute_features(samples: pl.DataFrame, config: FeaturesConfig, models_dir: Path, *, proxy_model=None,
                     progress: bool = True) -> tuple[FeatureSet, str]:
    """Features of `samples` (id, prompt, response); `proxy_model` = (model, tokenizer, name) to reuse one."""
    model, tokenizer, proxy = proxy_model or load_proxy(config, models_dir)
    if config.mode == "fast":
        featurizer = FastFeaturizer(model, tokenizer, dim=config.dim, seed=config.seed,
                                    block_in=config.block_in, block_out=config.block_out,
                                    batch_tokens=config.batch_tokens, max_tokens=config.max_tokens)
        return featurizer.features(samples, progress=progress), proxy
    result = faithful_features(model, tokenizer, samples, dim=config.dim, seed=config.seed,
                               max_tokens=config.max_tokens,
                               projection_dtype=getattr(torch, config.projection_dtype),
                               buffer_bytes=config.gradient_buffer_gb * 1e9, progress=progress)
    return result, proxy
