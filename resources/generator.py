"""The generator LLM: in-process vLLM (one engine per step process) or OpenAI-compatible servers."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from dagster import ConfigurableResource

from prismatic.config import GeneratorConfig, RayConfig
from prismatic.config_file import CONFIG_FILE
from prismatic.generation.engines.base import Engine
from prismatic.generation.engines.factory import engine_from_config
from prismatic.models import resolve_model
from resources.home import PrismHome

_ENGINES: dict[str, Engine] = {}


def build_engine(config: GeneratorConfig, models_dir, ray: RayConfig | None = None,
                 config_path: str | Path = "prism.yaml") -> Engine:
    """An engine for `config`; vLLM engines are cached per process (loading one takes a minute). With
    `ray` (`executor: ray`) and its `generation_replicas` > 0: vLLM replicas on the Ray cluster."""
    if config.backend == "openai":
        return engine_from_config(config, models_dir)
    path = resolve_model(config.model, models_dir)
    replicas = ray.generation_replicas if ray is not None else 0
    cache_key = f"{path}|{config.max_model_len}|{config.kv_cache_gb}|{replicas}"
    if cache_key not in _ENGINES:
        _ENGINES[cache_key] = engine_from_config(config, models_dir, ray, config_path)
    return _ENGINES[cache_key]


_ENDPOINT_FIELDS = ("sent", "ok", "failed", "output_tokens")


def _public_url(url: str) -> str:
    """`url` without user:password@ (a key put in the URL must not reach metadata)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def endpoint_counts(engine: Engine, since: dict[str, dict[str, int]] | None = None) -> dict[str, dict[str, int]]:
    """Per base URL of an OpenAI engine: attempts sent, ok, failed, output tokens (minus `since`, an
    earlier result of this function); `{}` for engines without endpoints (in-process vLLM). Keyed by
    URL only: the API key is never part of it."""
    stats = getattr(engine, "endpoint_stats", None) or {}
    since = since or {}
    counts = {}
    for url, stat in stats.items():
        key = _public_url(url)
        earlier = since.get(key, {})
        counts[key] = {field: getattr(stat, field) - earlier.get(field, 0) for field in _ENDPOINT_FIELDS}
    return counts


def close_engines() -> None:
    """Shut down cached in-process engines (their engine-core processes would outlive the run)."""
    while _ENGINES:
        _, engine = _ENGINES.popitem()
        engine.close()


class GeneratorResource(ConfigurableResource):
    """Builds the engine named by `generator:` in prism.yaml, and the cluster-agent metric's judge."""

    prism_home: PrismHome

    def engine(self) -> Engine:
        config = self.prism_home.config()
        ray = config.orchestration.ray if config.orchestration.executor == "ray" else None
        return build_engine(config.generator, config.models_dir, ray, config.home / CONFIG_FILE)

    def model_name(self) -> str:
        return self.prism_home.config().generator.model

    def judge(self) -> tuple[Engine, str]:
        """(engine, model name) of the cluster-agent metric's judge: `metrics.cluster_agent.judge`, or
        `generator` when that is null."""
        config = self.prism_home.config()
        judge = config.metrics.cluster_agent.judge or config.generator
        return build_engine(judge, config.models_dir), judge.model
