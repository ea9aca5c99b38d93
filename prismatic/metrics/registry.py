"""Diversity metrics by name (`METRICS`), and `compute_metrics` to run several on one data set.

A metric is a function of `MetricInputs` that returns a `MetricResult` (value, details JSON);
adding one is one function and one line in `METRICS`. Heavy things a metric needs (gradient features,
the proxy LM, the sentence encoder, the judge LLM) come from loaders in `MetricInputs`, each called
at most once and only when a metric asks for it, so the cheap metrics stay cheap. Imports of
numerical code happen inside the metric functions, so that listing the metrics stays cheap.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from prismatic.config import check_metric_names
from prismatic.errors import PrismError

if TYPE_CHECKING:
    from prismatic.gradients.proxy import Proxy


@dataclass
class MetricResult:
    value: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricInputs:
    """The samples (`id`, `prompt`, `response`) and loaders of what the metrics need.

    features: () → (n × d unit gradient features in sample order, what made them: proxy, mode, dim).
    proxy: () → the proxy LM (`prismatic.gradients.proxy.Proxy`).
    judge: () → (engine, model name) of the cluster-agent's LLM.
    embeddings: () → N × d unit sentence embeddings of `texts` (`metrics.embedding_model`).
    config: a `MetricsConfig`; max_tokens: the proxy's chat truncation (`features.max_tokens`).
    close: () → releases what the loaders opened and own (an engine process started for the judge).
    """

    samples: pl.DataFrame
    config: Any
    features: Callable[[], tuple[Any, dict]]
    proxy: Callable[[], Proxy]
    judge: Callable[[], tuple[Any, str]]
    embeddings: Callable[[], Any]
    max_tokens: int | None = None
    close: Callable[[], None] = lambda: None

    @functools.cached_property
    def texts(self) -> list[str]:
        return sample_texts(self.samples, self.config.text)


def sample_texts(samples: pl.DataFrame, text: str) -> list[str]:
    """What text metrics read of each sample: `prompt_response` (prompt, blank line, response),
    `prompt` or `response`."""
    if text == "prompt":
        return samples["prompt"].to_list()
    if text == "response":
        return samples["response"].to_list()
    return [f"{p}\n\n{r}" for p, r in zip(samples["prompt"], samples["response"])]


def _gvendi(inputs: MetricInputs) -> MetricResult:
    from prismatic.metrics.vendi import gvendi

    features, about = inputs.features()
    return MetricResult(gvendi(features), dict(about))


def _cluster_agent(inputs: MetricInputs) -> MetricResult:
    from prismatic.metrics.cluster_agent import cluster_agent

    engine, model = inputs.judge()
    value, details = cluster_agent(inputs.texts, inputs.samples["id"].to_list(), engine, model,
                                   inputs.config.cluster_agent)
    return MetricResult(value, details)


def _distinct_n(inputs: MetricInputs) -> MetricResult:
    from prismatic.metrics.baselines import distinct_n

    return MetricResult(distinct_n(inputs.texts, inputs.config.max_n), {"max_n": inputs.config.max_n})


def _ngram_vendi(inputs: MetricInputs) -> MetricResult:
    from prismatic.metrics.baselines import ngram_vendi

    return MetricResult(ngram_vendi(inputs.texts, inputs.config.max_n), {"max_n": inputs.config.max_n})


def _embedding_vendi(inputs: MetricInputs) -> MetricResult:
    from prismatic.metrics.baselines import embedding_vendi

    embeddings = inputs.embeddings()
    return MetricResult(embedding_vendi(embeddings), {"encoder": inputs.config.embedding_model,
                                                      "dim": int(embeddings.shape[1])})


def _compression_ratio(inputs: MetricInputs) -> MetricResult:
    from prismatic.metrics.baselines import compression_ratio

    return MetricResult(compression_ratio(inputs.texts), {"codec": "gzip level 9"})


def _self_repetition(inputs: MetricInputs) -> MetricResult:
    from prismatic.metrics.baselines import self_repetition

    return MetricResult(self_repetition(inputs.texts, inputs.config.repetition_n), {"n": inputs.config.repetition_n})


def _proxy_nll(inputs: MetricInputs) -> MetricResult:
    from prismatic.metrics.baselines import proxy_nll

    proxy = inputs.proxy()
    return MetricResult(proxy_nll(proxy.model, proxy.tokenizer, inputs.samples, inputs.max_tokens),
                        {"proxy": proxy.name, "max_tokens": inputs.max_tokens})


@dataclass(frozen=True)
class Metric:
    """name; compute; more_diverse: whether a `higher` or `lower` value means more diverse (None: the
    metric does not measure diversity); about: one line for help texts."""

    name: str
    compute: Callable[[MetricInputs], MetricResult]
    more_diverse: Literal["higher", "lower"] | None
    about: str


METRICS: dict[str, Metric] = {metric.name: metric for metric in [
    Metric("gvendi", _gvendi, "higher", "exp entropy of the spectrum of unit proxy-gradient features"),
    Metric("cluster_agent", _cluster_agent, "higher", "LLM judge clusters k samples per trial; mean C²/k"),
    Metric("distinct_n", _distinct_n, "higher", "unique / total word n-grams, mean over n = 1..max_n"),
    Metric("ngram_vendi", _ngram_vendi, "higher", "Vendi of the cosine kernel of n-gram counts, mean over n"),
    Metric("embedding_vendi", _embedding_vendi, "higher", "Vendi of the cosine kernel of sentence embeddings"),
    Metric("compression_ratio", _compression_ratio, "lower", "raw bytes / gzip bytes of all texts"),
    Metric("self_repetition", _self_repetition, "lower", "mean log(1 + n-grams re-occurring in other texts)"),
    Metric("proxy_nll", _proxy_nll, None, "mean assistant-token NLL under the proxy (not a diversity metric)"),
]}


def parse_metric_names(option: str) -> list[str]:
    """`a,b` or `all` (every metric) as a list of names."""
    if option.strip() == "all":
        return list(METRICS)
    names = [name.strip() for name in option.split(",") if name.strip()]
    if not names:
        raise PrismError("option --metrics: give metric names separated by commas, or `all`")
    try:
        return check_metric_names(names)
    except ValueError as exc:
        raise PrismError(f"option --metrics: {exc}") from None


def compute_metrics(names: Sequence[str], inputs: MetricInputs,
                    log: Callable[[str], None] | None = None) -> dict[str, MetricResult]:
    """Each named metric of `inputs`, in order; `details["seconds"]` is its wall time, loading the
    models it was the first to need included."""
    results = {}
    for name in check_metric_names(names):
        started = time.perf_counter()
        result = METRICS[name].compute(inputs)
        result.details["seconds"] = round(time.perf_counter() - started, 3)
        results[name] = result
        if log is not None:
            log(f"{name}: {result.value:.6g} ({result.details['seconds']} s)")
    return results


def inputs_from_config(samples: pl.DataFrame, config, *, features=None, proxy=None, judge=None,
                       embeddings=None) -> MetricInputs:
    """`MetricInputs` whose loaders follow a `PrismConfig`: the proxy and gradient features of
    `features:`, the embeddings of `metrics.embedding_model`, the judge of `metrics.cluster_agent.judge`
    (else `generator:`). Pass `features`, `proxy`, `judge` or `embeddings` loaders to reuse what a caller
    already has (the caller keeps owning them); call `close()` when done."""

    @functools.cache
    def load_proxy():
        if proxy is not None:
            return proxy()
        from prismatic.gradients.proxy import load_proxy as load

        return load(config.features, config.models_dir)

    @functools.cache
    def load_features():
        if features is not None:
            return features()
        from prismatic.gradients.proxy import compute_features

        result, name = compute_features(samples, config.features, config.models_dir, proxy=load_proxy())
        return result.features, {"proxy": name, "mode": result.meta["mode"], "dim": result.meta["dim"],
                                 "seed": config.features.seed}

    opened = []

    @functools.cache
    def load_judge():
        if judge is not None:
            return judge()
        from prismatic.generation.engines.factory import engine_from_config

        section = config.metrics.cluster_agent.judge or config.generator
        opened.append(engine_from_config(section, config.models_dir))
        return opened[-1], section.model

    def close():
        while opened:
            opened.pop().close()

    def load_embeddings():
        if embeddings is not None:
            return embeddings()
        from prismatic.metrics.embeddings import embed, load_encoder

        return embed(load_encoder(config.metrics.embedding_model), sample_texts(samples, config.metrics.text),
                     config.metrics.embedding_batch_size)

    return MetricInputs(samples=samples, config=config.metrics, features=load_features, proxy=load_proxy,
                        judge=load_judge, embeddings=load_embeddings, max_tokens=config.features.max_tokens,
                        close=close)
