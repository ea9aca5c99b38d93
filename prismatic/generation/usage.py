"""What generation costs: one response's tokens and latency (`Completion`), the sum over many (`Usage`),
and a round's spending limit (`Budget`).

Tokens are the server's `usage` (`prompt_tokens`, `completion_tokens`) or, in process, vLLM's token ids
(`len(prompt_token_ids)`, `len(outputs[0].token_ids)`). Cost in USD, with a price table
(`generator.prices`, `prismatic.config.PriceTable`):

    cost = (prompt_tokens · input_usd_per_million + completion_tokens · output_usd_per_million) / 10⁶

A response journaled by code older than these counts has none (`Completion.prompt_tokens` None): it is
counted in `Usage.uncounted` and adds no tokens.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prismatic.errors import PrismError

if TYPE_CHECKING:
    from prismatic.config import GeneratorConfig, PriceTable


@dataclass(frozen=True)
class Completion:
    """One finished response: its text, its tokens (None: not known) and the seconds it took.

    latency_s: for a server, the seconds of the attempt that answered, from sending the request to the
    last byte of the response (retries and rate-limit waits before it are not counted); in process, the
    seconds of the batched vLLM call that produced it.
    """

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None

    @classmethod
    def of(cls, value: str | Completion) -> Completion:
        """`value` itself, or a bare text (an engine that counts nothing) as a Completion without counts."""
        return value if isinstance(value, Completion) else cls(value)

    @property
    def counted(self) -> bool:
        return self.prompt_tokens is not None and self.completion_tokens is not None

    @property
    def total_tokens(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


@dataclass
class Usage:
    """The sum over responses: `responses`, their `prompt_tokens` and `completion_tokens`, how many had no
    counts (`uncounted`), and their latencies (seconds, those known)."""

    responses: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    uncounted: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def of(cls, completions: Iterable[Completion]) -> Usage:
        usage = cls()
        for completion in completions:
            usage.add(completion)
        return usage

    def add(self, completion: Completion) -> None:
        self.responses += 1
        if completion.counted:
            self.prompt_tokens += completion.prompt_tokens
            self.completion_tokens += completion.completion_tokens
        else:
            self.uncounted += 1
        if completion.latency_s is not None:
            self.latencies.append(completion.latency_s)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def cost(self, prices: PriceTable | None) -> float | None:
        """USD under `prices` (module docstring); None without a price table."""
        if prices is None:
            return None
        return (self.prompt_tokens * prices.input_usd_per_million
                + self.completion_tokens * prices.output_usd_per_million) / 1e6

    def summary(self, prices: PriceTable | None = None) -> dict[str, Any]:
        """Plain values for provenance and metadata: responses, prompt/completion/total tokens, uncounted,
        latency_s_mean and latency_s_p95 (nearest-rank 95th percentile; None without latencies),
        cost_usd (None without `prices`) and the prices used."""
        latencies = sorted(self.latencies)
        p95 = latencies[max(0, math.ceil(0.95 * len(latencies)) - 1)] if latencies else None
        cost = self.cost(prices)
        return {"responses": self.responses, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens,
                "uncounted": self.uncounted,
                "latency_s_mean": round(sum(latencies) / len(latencies), 4) if latencies else None,
                "latency_s_p95": round(p95, 4) if p95 is not None else None,
                "cost_usd": round(cost, 6) if cost is not None else None,
                "prices": prices.model_dump() if prices is not None else None}


class BudgetExhausted(PrismError):
    """An engine stopped sending because its budget was reached (`Budget.reached`);
    `prismatic.generation.journal.generate_journaled` turns it into the round's one-line error."""


class Budget:
    """A round's spending limit: `tokens` (prompt + completion) and/or `usd` (under `prices`).

    `spent` starts at what the round's journal already holds (its earlier runs paid for it) and grows
    as responses are journaled (`charge`). Engines send a request only while `reached()` is false, so
    once the limit is reached no new request goes out; the requests already in flight finish and are
    journaled, so the spending can pass the limit by at most what those requests use. Thread-safe.
    """

    def __init__(self, *, tokens: int | None = None, usd: float | None = None, prices: PriceTable | None = None,
                 spent: Usage | None = None):
        if tokens is None and usd is None:
            raise PrismError("a budget needs a limit in tokens or in USD")
        if usd is not None and prices is None:
            raise PrismError("a budget in USD needs a price table (generator.prices)")
        self.tokens = tokens
        self.usd = usd
        self.prices = prices
        self.spent = Usage(spent.responses, spent.prompt_tokens, spent.completion_tokens, spent.uncounted) \
            if spent is not None else Usage()
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: GeneratorConfig, spent: Usage | None = None) -> Budget | None:
        """The budget of `generator.budget_tokens` / `budget_usd` (None when neither is set)."""
        if config.budget_tokens is None and config.budget_usd is None:
            return None
        return cls(tokens=config.budget_tokens, usd=config.budget_usd, prices=config.prices, spent=spent)

    def charge(self, completion: Completion) -> None:
        with self._lock:
            self.spent.add(completion)

    def reached(self) -> bool:
        with self._lock:
            if self.tokens is not None and self.spent.total_tokens >= self.tokens:
                return True
            return self.usd is not None and self.spent.cost(self.prices) >= self.usd

    def describe(self) -> str:
        """`generator.budget_tokens = 5000 reached: spent 5120 tokens (…)` — which limit, and what was spent."""
        with self._lock:
            spent = self.spent
            cost = spent.cost(self.prices)
            if self.tokens is not None and spent.total_tokens >= self.tokens:
                limit = f"generator.budget_tokens = {self.tokens}"
            elif self.usd is not None and cost is not None and cost >= self.usd:
                limit = f"generator.budget_usd = {self.usd:g}"
            else:
                limit = " and ".join(part for part in (
                    f"generator.budget_tokens = {self.tokens}" if self.tokens is not None else "",
                    f"generator.budget_usd = {self.usd:g}" if self.usd is not None else "") if part)
            money = f", ${cost:.4f}" if cost is not None else ""
            return (f"{limit} reached: spent {spent.total_tokens} tokens ({spent.prompt_tokens} prompt + "
                    f"{spent.completion_tokens} completion{money}) on {spent.responses} responses of this round")
