"""Generation requests: what to send an engine, with which sampling, under which key.

`Sampling` is `prismatic.config.SamplingConfig` (temperature, top_p, max_tokens: the part prism.yaml
sets) plus what a step adds to it: the seed and stop strings. `Sampling.from_config` is the one way a
config section becomes a request's sampling.

Every request has a key (`request_key`): the SHA-256 hex digest of the canonical JSON (sorted keys,
no insignificant whitespace) of everything that determines its output: model, messages or raw
prompt, sampling, index and structured-output constraint. The same request always has the same key,
so finished responses can be journaled (`prismatic.generation.journal`) and a retried step sends only
the missing ones. Keys are pinned by tests/generation/test_requests.py: changing what enters the
payload invalidates every journal and every `generations.request_key` (docs/data-model.md).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prismatic.config import ClusterAgentConfig, SamplingConfig
from prismatic.errors import PrismError

Message = dict[str, str]
"""One chat message: `{"role": "user" | "assistant" | "system", "content": …}`."""


class Sampling(SamplingConfig):
    """Decoding settings of one request: the fields of `SamplingConfig` (temperature, top_p,
    max_tokens: new tokens at most) plus

    seed: the step's base seed (None: the engine's own randomness, not reproducible). A request's
      effective seed is derived from its key (`GenerationRequest.seed`), so requests that differ only
      by `index` (e.g. the 3 solutions of one problem) sample differently but reproducibly.
    stop: generation ends before the first of these strings (not included in the text).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int | None = Field(0, ge=0)
    stop: tuple[str, ...] | None = None

    @classmethod
    def from_config(cls, config: SamplingConfig | ClusterAgentConfig, seed: int | None,
                    stop: tuple[str, ...] | None = None) -> Sampling:
        """The sampling of a config section that has the `SamplingConfig` fields (e.g.
        `synthesis.solution_sampling`, or `diversity.cluster_agent` for the judge), with `seed` and `stop`."""
        fields = {name: getattr(config, name) for name in SamplingConfig.model_fields}
        return cls(**fields, seed=seed, stop=stop)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no insignificant whitespace: one text per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def request_key(model: str, messages: list[Message], sampling: Sampling, index: int = 0, *,
                choices: list[str] | None = None, json_schema: dict | None = None,
                prompt: str | None = None) -> str:
    """SHA-256 hex of the canonical JSON of everything that determines a request's output.

    `index` tells apart requests that are otherwise identical (the i-th solution of a problem).
    `prompt` and `sampling.stop` enter the payload only when set, so chat requests without stop
    strings keep the keys (and journals) they had before these fields existed.
    """
    sampling_fields = sampling.model_dump()
    if sampling.stop is None:
        del sampling_fields["stop"]
    else:
        sampling_fields["stop"] = list(sampling.stop)
    payload = {
        "model": model,
        "messages": [dict(m) for m in messages],
        "sampling": sampling_fields,
        "index": index,
        "choices": list(choices) if choices is not None else None,
        "json_schema": json_schema,
    }
    if prompt is not None:
        payload["prompt"] = prompt
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


class GenerationRequest(BaseModel):
    """One completion to run: chat messages (or a raw text prompt), sampling, and an optional
    structured-output constraint.

    prompt: a raw text to continue, with no chat template (a completion, not a chat completion);
      `messages` is then empty. Few-shot continuation prompts use it.
    choices: the output must be exactly one of these strings.
    json_schema: the output must be JSON valid under this schema.
    Build requests with `GenerationRequest.build` (chat) or `GenerationRequest.text` (raw prompt) so
    the key matches the content.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    messages: list[Message]
    sampling: Sampling
    choices: list[str] | None = None
    json_schema: dict[str, Any] | None = None
    prompt: str | None = None

    @classmethod
    def build(cls, model: str, messages: list[Message], sampling: Sampling, index: int = 0, *,
              choices: list[str] | None = None, json_schema: dict | None = None) -> GenerationRequest:
        if choices is not None and json_schema is not None:
            raise PrismError("a request takes either `choices` or `json_schema`, not both")
        if choices is not None and not choices:
            raise PrismError("`choices` must not be empty")
        key = request_key(model, messages, sampling, index, choices=choices, json_schema=json_schema)
        return cls(key=key, messages=messages, sampling=sampling, choices=choices, json_schema=json_schema)

    @classmethod
    def text(cls, model: str, prompt: str, sampling: Sampling, index: int = 0) -> GenerationRequest:
        """A raw-text completion request: the model continues `prompt` as it is."""
        if not prompt:
            raise PrismError("a text completion request needs a non-empty prompt")
        key = request_key(model, [], sampling, index, prompt=prompt)
        return cls(key=key, messages=[], sampling=sampling, prompt=prompt)

    @property
    def seed(self) -> int | None:
        """The seed an engine samples with: None when `sampling.seed` is None, else the low 31 bits of
        the key's first 8 hex digits (`int(key[:8], 16) & 0x7FFFFFFF`, in [0, 2³¹))."""
        if self.sampling.seed is None:
            return None
        return int(self.key[:8], 16) & 0x7FFFFFFF
