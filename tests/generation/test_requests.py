"""Requests, sampling and request keys (prismatic.generation.requests), pinned to their values before the split."""

from __future__ import annotations

import polars as pl
import pytest

from prismatic.config import ClusterAgentConfig, SamplingConfig, SynthesisConfig
from prismatic.errors import PrismError
from prismatic.generation.prompts import (
    CONTINUATION_STOP,
    NLI_LABELS,
    continuation_prompt,
    nli_prompt,
    problem_prompt,
    solution_prompt,
)
from prismatic.generation.requests import GenerationRequest, Sampling, request_key
from prismatic.synthesis.generate import problem_jobs, problems_schema

SOLUTION = Sampling.from_config(SynthesisConfig().solution_sampling, seed=0)
"""The default solution sampling (paper: T=0.75, top_p=0.95), seeded 0."""


def test_paper_sampling_defaults():
    config = SynthesisConfig()
    assert (config.problem_sampling.temperature, config.problem_sampling.top_p) == (1.0, 0.95)
    assert (config.solution_sampling.temperature, config.solution_sampling.top_p) == (0.75, 0.95)
    with pytest.raises(ValueError):
        Sampling(top_p=0)
    with pytest.raises(ValueError):
        Sampling(max_tokens=0)


def test_sampling_is_the_config_section_plus_seed_and_stop():
    section = SamplingConfig(temperature=0.3, top_p=0.5, max_tokens=7)
    sampling = Sampling.from_config(section, seed=4, stop=("\n",))
    assert isinstance(sampling, SamplingConfig)
    assert sampling.model_dump() == {"temperature": 0.3, "top_p": 0.5, "max_tokens": 7, "seed": 4, "stop": ("\n",)}
    assert Sampling.from_config(section, seed=None).seed is None and SOLUTION.stop is None
    with pytest.raises(ValueError):
        Sampling(temperature=1.0, top_k=5)
    with pytest.raises(ValueError):
        sampling.seed = 5  # frozen: a request's sampling cannot drift from its key


def test_request_key_is_stable_and_sensitive_to_every_field():
    messages = [{"role": "user", "content": "Solve 1 + 1."}]
    base = {"model": "m", "messages": messages, "sampling": SOLUTION, "index": 0}
    key = request_key(**base)
    assert len(key) == 64 and int(key, 16) >= 0
    assert request_key(**base) == key
    # a copy built in another order is the same request
    assert request_key("m", [{"content": "Solve 1 + 1.", "role": "user"}], Sampling(**SOLUTION.model_dump()),
                       0) == key
    variants = [
        dict(base, model="m2"),
        dict(base, messages=[{"role": "user", "content": "Solve 1 + 2."}]),
        dict(base, messages=[{"role": "system", "content": "Solve 1 + 1."}]),
        dict(base, messages=messages + [{"role": "assistant", "content": ""}]),
        dict(base, sampling=SOLUTION.model_copy(update={"temperature": 0.7})),
        dict(base, sampling=SOLUTION.model_copy(update={"top_p": 0.9})),
        dict(base, sampling=SOLUTION.model_copy(update={"max_tokens": 7})),
        dict(base, sampling=SOLUTION.model_copy(update={"seed": 1})),
        dict(base, sampling=SOLUTION.model_copy(update={"seed": None})),
        dict(base, index=1),
        dict(base, choices=["a", "b"]),
        dict(base, choices=["b", "a"]),
        dict(base, json_schema={"type": "object"}),
    ]
    keys = {request_key(**v) for v in variants}
    assert key not in keys and len(keys) == len(variants)


def test_generation_request_build_and_seed():
    messages = solution_prompt("What is 2 + 2?", "math")
    a = GenerationRequest.build("m", messages, SOLUTION, 0)
    b = GenerationRequest.build("m", messages, SOLUTION, 1)
    assert a.key == request_key("m", messages, SOLUTION, 0)
    assert a.seed != b.seed and 0 <= a.seed < 2**31
    assert GenerationRequest.build("m", messages, SOLUTION, 0).seed == a.seed
    unseeded = GenerationRequest.build("m", messages, SOLUTION.model_copy(update={"seed": None}))
    assert unseeded.seed is None
    labels = GenerationRequest.build("m", messages, SOLUTION, choices=["x", "y"])
    assert labels.key == request_key("m", messages, SOLUTION, 0, choices=["x", "y"])
    with pytest.raises(PrismError):
        GenerationRequest.build("m", messages, SOLUTION, choices=["x"], json_schema={"type": "string"})
    with pytest.raises(PrismError):
        GenerationRequest.build("m", messages, SOLUTION, choices=[])


# ------------------------------------------------------------------------------------------ pinned keys
# Keys recorded before the generation package was split (commit 865fcd6). A change here changes every
# journal and every `generations.request_key`: journals of earlier runs would be resent in full.

PINNED = {
    "solution": "ebd8a2141b3fc3f69b8fd1c375d31cf4f975640c1cd9a63c35ba0f58fe2dae0e",
    "solution_example": "cb9c2e1cf6de952c2c6f8e62e5673bb00618bc6ce04d3172c97da21806189cc6",
    "nli_label": "59a2a18d7dd8d968a655cbca024da1d9a20ae131554bba6907d98980e404edd8",
    "unseeded": "a1aeb0f76efb754db72cffd1976015a11b3af752098b7e07122e191042b83c17",
    "chat_with_stop": "1bc85b7e49b7486268e623c5f2cd50a6233aa5c7c5529f75b865524e26f9d61d",
    "problem_delimited": "cff92923fe54007749d583683c3e6aea84f4f51f4d1af533dbc676cf2a56c936",
    "problem_json": "b87a5467aecc69304c9c02006c12e4b3413e82f3aba5bcff4d3f56cffa65fd08",
    "problem_fewshot": "ce800b915f2819a0e4f01a546361dbd22dbc81e39985a005019f6327125ec9bc",
    "judge": "62938f29823c942265c43425160788790d8057a00469a0136d8898dd307ccb60",
    "jobs_fewshot": ["0021a1201b7f87d2fe84eb6919d5af7e8bbe4e633e6c720ee3aa7ce49ff655ed",
                     "42b4030c09447a3ff2109d71b239d23805146aa5d34740e3cc302ece2ee86acf",
                     "a1ab8e8c2d56452d7b6283d435e2fa87c6ff0b63cb3f5e379323bc08de6dcab5",
                     "c0337ab92471a7c1023b8ca690a928d793bd9e5c6c1261fd92dadd1125394f36"],
    "jobs_delimited": ["262c1cc1488256c107ca3586e2f70894bcd05e1b8655d881f95da3f410c103da",
                       "edc1d18638bac1f89909c64d4a778815c4a4dc5e4c5f35da03e18599c36823d2"],
    "jobs_json": ["4568e15c30ae5a7d937ed6a060ca501d972801339836ae92554f125d8e17fd3d",
                  "4b270bb4e9492a713a293c2e2eb4c42a5b9bdf5c76b7840ca736c7569f0a631a"],
}
EXAMPLES = [{"id": "a", "prompt": "What is 2 + 3?", "level": 1},
            {"id": "b", "prompt": "Tom has 4 apples and eats 1. How many are left?", "level": 2}]
QUESTION = solution_prompt("What is 2 + 3?", "math")


def test_solution_request_keys_are_pinned():
    config = SynthesisConfig()
    solution = Sampling.from_config(config.solution_sampling, seed=config.seed)
    assert solution == Sampling(temperature=0.75, top_p=0.95, max_tokens=384, seed=0)
    assert GenerationRequest.build("smollm2-135m-instruct", QUESTION, solution, 2).key == PINNED["solution"]
    shown = solution_prompt("What is 2 + 3?", "math", example=("What is 1 + 1?", "1 + 1 = \\boxed{2}"))
    assert GenerationRequest.build("m", shown, solution, 0).key == PINNED["solution_example"]
    label = solution_prompt(nli_prompt("A dog runs.", "An animal moves."), "nli", reasoning=False)
    assert GenerationRequest.build("m", label, solution, 1, choices=list(NLI_LABELS)).key == PINNED["nli_label"]
    unseeded = solution.model_copy(update={"seed": None})
    assert GenerationRequest.build("m", QUESTION, unseeded, 0).key == PINNED["unseeded"]
    stopped = solution.model_copy(update={"stop": ("\n\n",)})
    assert GenerationRequest.build("m", QUESTION, stopped, 0).key == PINNED["chat_with_stop"]


def test_problem_request_keys_are_pinned():
    problem = Sampling.from_config(SynthesisConfig().problem_sampling, seed=0)
    assert problem == Sampling(temperature=1.0, top_p=0.95, max_tokens=384, seed=0)
    delimited = GenerationRequest.build("m", problem_prompt(EXAMPLES, "math", n_new=2), problem, 3)
    assert delimited.key == PINNED["problem_delimited"]
    structured = GenerationRequest.build("m", problem_prompt(EXAMPLES, "nli", n_new=2), problem, 0,
                                         json_schema=problems_schema("nli", 2))
    assert structured.key == PINNED["problem_json"]
    stopped = problem.model_copy(update={"stop": CONTINUATION_STOP["math"]})
    fewshot = GenerationRequest.text("m", continuation_prompt(EXAMPLES, "math"), stopped, 1)
    assert fewshot.key == PINNED["problem_fewshot"]


def test_judge_request_key_is_pinned():
    judge = Sampling.from_config(ClusterAgentConfig(), seed=0)
    assert judge == Sampling(temperature=0.7, top_p=0.95, max_tokens=768, seed=0)
    request = GenerationRequest.build("m", [{"role": "user", "content": "Propose criteria."}], judge, 5,
                                      json_schema={"type": "object"})
    assert request.key == PINNED["judge"]


@pytest.mark.parametrize("problem_format", ["fewshot", "delimited", "json"])
def test_problem_step_request_keys_are_pinned(problem_format):
    pool = pl.DataFrame([dict(e, task="math") for e in EXAMPLES]
                        + [{"id": "n1", "prompt": nli_prompt("A dog runs.", "An animal moves."), "level": 2,
                            "task": "nli"}])
    config = SynthesisConfig(problem_format=problem_format, prompts_per_round=2, few_shot=2)
    keys = [job.request.key for job in problem_jobs(pool, config, "m", "r001")]
    assert keys == PINNED[f"jobs_{problem_format}"]
