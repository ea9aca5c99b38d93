"""The engine interface (`prismatic.generation.engines.factory` builds one from prism.yaml).

Every engine has one method, `generate(requests, on_results=None, budget=None) -> list[str]`: the
texts of the requests, in request order. While it runs it reports finished responses to `on_results`
as a list of `(position, Completion)` pairs (`prismatic.generation.usage.Completion`: the text, the
prompt and completion tokens, the latency): `VLLMEngine` once per batched call; `OpenAIEngine` once per
response, as each completes. `prismatic.generation.journal.generate_journaled` uses this to journal
every finished response with its counts, so a retried step sends only the requests it has no answer
for. An engine may report a bare text instead of a Completion (then nothing is counted).

With a `budget` (`prismatic.generation.usage.Budget`, charged by the caller as responses are
reported), an engine sends nothing once `budget.reached()`: it lets what is in flight finish, reports
it, and raises `BudgetExhausted`. `OpenAIEngine` checks before every attempt, the in-process engines
before every batched call (`VLLMEngine` then cuts a call into chunks of `BUDGET_CHUNK` requests).

Engines count generated tokens (`output_tokens`) and finished requests (`completed`) so callers can
report throughput (tokens per second = Δoutput_tokens / Δwall seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from prismatic.generation.requests import GenerationRequest

if TYPE_CHECKING:
    from prismatic.generation.usage import Budget, Completion

ResultCallback = Callable[[list[tuple[int, "Completion | str"]]], None]
"""Receives finished `(position in the request list, Completion or text)` pairs while an engine runs."""

BUDGET_CHUNK = 256
"""Requests per batched call of an in-process engine given a budget (it checks the budget between calls)."""


class Engine(Protocol):
    """What generation steps need from an engine."""

    output_tokens: int

    def generate(self, requests: Sequence[GenerationRequest], on_results: ResultCallback | None = None,
                 budget: Budget | None = None) -> list[str]: ...
