"""The OpenAI-compatible generator against a real `vllm serve` of the tiny model on 127.0.0.1."""

import pytest

from prismatic.engines import Journal, OpenAIEngine, generate_journaled
from prismatic.generation import NLI_LABELS, GenerationRequest, Sampling
from prismatic.synthesis import parse_structured_problems, problems_schema
from conftest import vllm_servers


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with vllm_servers(tiny_model_dir, tmp_path_factory.mktemp("serve")) as (served,):
        yield served.url


def _request(index, max_tokens=400, **constraint):
    messages = [{"role": "user", "content": f"Write something, number {index}."}]
    sampling = Sampling(temperature=1.0, top_p=0.95, max_tokens=max_tokens, seed=0)
    return GenerationRequest.build("tiny", messages, sampling, index, **constraint)


@pytest.mark.slow
def test_openai_engine_against_vllm_serve(server, tmp_path):
    engine = OpenAIEngine([server], "tiny", max_concurrency=4)
    requests = ([_request(i) for i in range(3)] + [_request(10 + i, choices=list(NLI_LABELS)) for i in range(3)]
                + [_request(20, max_tokens=1900, json_schema=problems_schema("math", 2))])
    journal = Journal(tmp_path / "journal.jsonl")
    texts = generate_journaled(engine, requests, journal)
    assert len(texts) == 7 and all(isinstance(t, str) for t in texts)
    assert set(texts[3:6]) <= set(NLI_LABELS)
    assert len(parse_structured_problems(texts[6], "math")) >= 1
    assert engine.endpoint_stats[server].ok == 7 and engine.output_tokens > 0
    # Same seeds, same outputs; and a rerun is served from the journal without a request.
    again = OpenAIEngine([server], "tiny").generate(requests[:3])
    assert again == texts[:3]
    replay_engine = OpenAIEngine([server], "tiny")
    assert generate_journaled(replay_engine, requests, Journal(tmp_path / "journal.jsonl")) == texts
    assert replay_engine.endpoint_stats[server].sent == 0
