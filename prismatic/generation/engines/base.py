"""The engine interface (`prismatic.generation.engines.factory` builds one from prism.yaml).

Every engine has one method, `generate(requests, on_results=None) -> list[str]`: the texts of the
requests, in request order. While it runs it reports finished texts to `on_results` as a list of
`(position, text)` pairs: `VLLMEngine` once per batched call; `OpenAIEngine` once per response, as
each completes. `prismatic.generation.journal.generate_journaled` uses this to journal every finished
response, so a retried step sends only the requests it has no answer for.

Engines count generated tokens (`output_tokens`) and finished requests (`completed`) so callers can
report throughput (tokens per second = Δoutput_tokens / Δwall seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from prismatic.generation.requests import GenerationRequest

ResultCallback = Callable[[list[tuple[int, str]]], None]
"""Receives finished `(position in the request list, text)` pairs while an engine runs."""


class Engine(Protocol):
    """What generation steps need from an engine."""

    output_tokens: int

    def generate(self, requests: Sequence[GenerationRequest],
                 on_results: ResultCallback | None = None) -> list[str]: ...
