"""`OpenAIEngine`: chat completions on OpenAI-compatible servers (e.g. `vllm serve`).

Requests are spread round-robin over several base URLs, with bounded concurrency and retries with
exponential backoff (attempt a waits `backoff · 2^(a−1)` seconds, jittered to 50–100 %, at most
`max_backoff`); a failing URL is rested the same way and its requests move to the others. The API
key is never put in errors or logs.

Every attempt has a wall-clock deadline (`request_timeout`, prism.yaml `generator.request_timeout_s`)
from sending the request to the last byte of the response, enforced by `asyncio.timeout` around the
whole exchange: a server that answers slowly, even one byte a second, is abandoned at the deadline
(its connection closed) and the request moves on. The HTTP client's own timeout (`timeout`,
`generator.timeout_s`) bounds each network operation alone — connecting, the wait for the next bytes
— and starts again with every byte received, so by itself it cannot bound an attempt.

The client is aiohttp, one session per `generate` with keep-alive connections (at most
`max_concurrency` per URL), chosen for its CPU cost per request, which bounds how many responses a
second a fast server can deliver (httpx's was several times higher: benchmarks/results/scale.md).
A request therefore ends within `(max_retries + 1) · request_timeout` seconds plus the backoff sleeps
(and the rate-limit waits).

Rate limits (`max_requests_per_minute`, `max_tokens_per_minute`) hold for the engine as a whole, all
URLs together: one `RateLimiter` (an even pace) admits every attempt, retries included. A 429 or
503 answer with a `Retry-After` header (seconds, or an HTTP date) rests its URL for exactly that long:
no request is sent to it before then (others take the work; when every URL rests, requests wait).
With a `Budget`, no attempt is sent once the budget is reached (`prismatic.generation.usage`).
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from prismatic.errors import PrismError
from prismatic.generation.engines.base import ResultCallback
from prismatic.generation.engines.ratelimit import RateLimiter
from prismatic.generation.requests import GenerationRequest
from prismatic.generation.usage import Budget, BudgetExhausted, Completion

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class EndpointStats:
    """What one base URL did: attempts sent, successes, failures, tokens generated."""

    url: str
    sent: int = 0
    ok: int = 0
    failed: int = 0
    output_tokens: int = 0


class _Retryable(Exception):
    """A failure another attempt may not have: timeout, connection error, 5xx, 429, bad body.
    retry_after: seconds the server asked its URL to be left alone (`Retry-After`), if it did."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Aborted(Exception):
    """The call is being abandoned because another request failed for good."""


_RETRY_STATUS = {408, 425, 429}
_FINISHED = {"stop", "length"}
"""finish_reason of a completion that ran to its end; others (None, "abort", "error") are retried."""
_RETRY_AFTER_STATUS = {429, 503}
"""Answers whose `Retry-After` header rests their URL for that long."""
PROMPT_TOKENS_PER_BYTE = 0.5
"""The rate limiter's estimate of a prompt's tokens per UTF-8 byte before any server has counted one (more
than English or code needs); afterwards the largest ratio a server reported."""


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for: a number of seconds, or an HTTP date (seconds from `now`,
    POSIX time, to it; at least 0). None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end on a new event loop: in this thread, or in a helper thread when this
    thread already runs a loop (a notebook)."""
    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    if not in_loop:  # outside the `except`, so that an error of the coroutine has no context attached
        return asyncio.run(coroutine)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="prism-openai")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class OpenAIEngine:
    """Chat completions on OpenAI-compatible servers (`POST {base_url}/chat/completions`; a raw-text
    request, `GenerationRequest.prompt`, goes to `POST {base_url}/completions`).

    base_urls: e.g. `["http://gpu1:8000/v1", "http://gpu2:8000/v1"]`; request i starts on URL
      i mod n, and a URL that fails is rested (exponential cool-down) while others take its work.
    model: the served model name.
    max_concurrency: requests in flight at once (tasks on one event loop).
    max_retries: further attempts after the first, on timeouts, connection errors (a server that
      restarts), 5xx and 429, bodies that are not a (chat) completion, and incomplete completions
      (content null, or finish_reason other than "stop"/"length", as when a server aborts requests
      on shutdown), with exponential backoff (`backoff` · 2^attempt seconds, jittered, at most
      `max_backoff`). Other 4xx answers fail at once: retrying a bad request does not help. An
      empty text with finish_reason "stop" is the model's answer (a seeded retry would repeat it)
      and is returned; the caller's parser rejects it.
    timeout: seconds one network operation may take (connect, a write, the wait for the next bytes).
    request_timeout: seconds one attempt may take from sending to the last byte of the response
      (wall clock, whatever the server does); then the attempt is retried like a timeout.
    max_requests_per_minute, max_tokens_per_minute: limits over all URLs together, per `rate_window_s`
      seconds (60; tests shorten it); tokens are prompt + completion, estimated at sending
      (`estimate`) and corrected by the server's `usage` (`ratelimit.RateLimiter`).
    `choices` are sent as vLLM's `structured_outputs: {"choice": [...]}` (vLLM ≥ 0.11 servers);
    `json_schema` as the standard `response_format: {"type": "json_schema", ...}`.
    """

    def __init__(self, base_urls: Sequence[str], model: str, api_key: str | None = None,
                 max_concurrency: int = 8, max_retries: int = 4, timeout: float = 120.0,
                 request_timeout: float = 300.0, backoff: float = 0.5, max_backoff: float = 30.0,
                 max_requests_per_minute: int | None = None, max_tokens_per_minute: int | None = None,
                 rate_window_s: float = 60.0):
        if isinstance(base_urls, str):
            base_urls = [base_urls]
        urls = [u.rstrip("/") for u in base_urls]
        if not urls:
            raise PrismError("the openai generator needs at least one base URL")
        if len(set(urls)) != len(urls):
            raise PrismError("the openai generator's base URLs must be distinct")
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0 or request_timeout <= 0:
            raise PrismError("max_concurrency must be ≥ 1, max_retries ≥ 0, timeout > 0 and request_timeout > 0")
        self.base_urls = urls
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.output_tokens = 0
        self.completed = 0
        self.endpoint_stats = {url: EndpointStats(url) for url in urls}
        self.limiter = (RateLimiter(max_requests_per_minute, max_tokens_per_minute, rate_window_s)
                        if max_requests_per_minute or max_tokens_per_minute else None)
        self._tokens_per_byte: float | None = None
        """The largest prompt tokens per byte a server has reported (None: none yet)."""
        self._warned_no_usage = False
        self._api_key = api_key or None
        self._lock = threading.Lock()
        self._next = itertools.count()
        self._rest_until = dict.fromkeys(urls, 0.0)
        self._failures = dict.fromkeys(urls, 0)

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return f"OpenAIEngine(base_urls={self.base_urls!r}, model={self.model!r}, api_key={key})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _http(self) -> Any:
        """A new aiohttp session (one per `generate`: a session belongs to the event loop it runs on);
        `timeout` bounds connecting and each wait for bytes (`sock_connect`, `sock_read`)."""
        try:
            import aiohttp
        except ImportError:
            raise PrismError("the openai generator needs the `aiohttp` package") from None

        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        connector = aiohttp.TCPConnector(limit=self.max_concurrency * len(self.base_urls),
                                         limit_per_host=self.max_concurrency)
        return aiohttp.ClientSession(headers=headers, connector=connector, trust_env=True,
                                     timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout,
                                                                   sock_read=self.timeout))

    def close(self) -> None:
        """Nothing to release: each `generate` closes its connections when it returns."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON body of one request: a chat completion, or a completion when it has a raw `prompt`."""
        sampling = request.sampling
        body: dict[str, Any] = {
            "model": self.model, "n": 1,
            "temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
        }
        if request.prompt is None:
            body["messages"] = list(request.messages)
        else:
            body["prompt"] = request.prompt
        if request.seed is not None:
            body["seed"] = request.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if request.choices is not None:
            body["structured_outputs"] = {"choice": list(request.choices)}
        elif request.json_schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": request.json_schema}}
        return body

    @staticmethod
    def _prompt_bytes(body: dict[str, Any]) -> int:
        if "messages" in body:
            return sum(len(json.dumps(m, ensure_ascii=False).encode()) for m in body["messages"])
        return len(body["prompt"].encode())

    def estimate(self, body: dict[str, Any]) -> int:
        """Tokens a request may use, for the rate limiter: its prompt's UTF-8 bytes × the largest
        prompt-tokens-per-byte ratio seen (`PROMPT_TOKENS_PER_BYTE` before any), plus `max_tokens`."""
        ratio = PROMPT_TOKENS_PER_BYTE if self._tokens_per_byte is None else self._tokens_per_byte
        return int(self._prompt_bytes(body) * ratio) + 1 + int(body.get("max_tokens") or 0)

    def _pick(self, start: int, attempt: int, last_failed: str | None) -> tuple[str, bool]:
        """(URL for this attempt, whether it is still resting).

        Round-robin from URL `start + attempt`: the first URL that is not resting and did not just
        fail; else the one that just failed, if its rest is over; else the one whose rest ends first.
        """
        now = time.monotonic()
        n = len(self.base_urls)
        order = [self.base_urls[(start + attempt + j) % n] for j in range(n)]
        with self._lock:
            awake = [url for url in order if self._rest_until[url] <= now]
            for url in awake:
                if url != last_failed:
                    return url, False
            if awake:
                return awake[0], False
            return min(order, key=lambda u: self._rest_until[u]), True

    def _record(self, url: str, ok: bool, tokens: int = 0, retry_after: float | None = None) -> None:
        """Count an attempt's outcome; a failure rests its URL: `retry_after` seconds when the server
        asked for that, else `backoff` · 2^(consecutive failures − 1), at most `max_backoff`."""
        with self._lock:
            stats = self.endpoint_stats[url]
            if ok:
                stats.ok += 1
                stats.output_tokens += tokens
                self.output_tokens += tokens
                self.completed += 1
                self._failures[url] = 0
                self._rest_until[url] = 0.0
            else:
                stats.failed += 1
                self._failures[url] += 1
                rest = min(self.max_backoff, self.backoff * 2 ** (self._failures[url] - 1))
                self._rest_until[url] = time.monotonic() + (rest if retry_after is None else retry_after)

    async def _attempt(self, client: Any, url: str, body: dict[str, Any], ticket: Any) -> Completion:
        """One attempt on `url`; `ticket` is its rate-limiter admission (None without limits), settled
        with the tokens the server counted."""
        import aiohttp

        chat = "messages" in body  # else a raw-text completion (`body`)
        with self._lock:
            self.endpoint_stats[url].sent += 1
        started = time.monotonic()
        deadline = asyncio.timeout(self.request_timeout)
        try:
            async with deadline:
                async with client.post(f"{url}/{'chat/completions' if chat else 'completions'}",
                                       data=json.dumps(body)) as response:
                    status, retry_header = response.status, response.headers.get("retry-after")
                    text = (await response.read()).decode("utf-8", errors="replace")
        except TimeoutError:
            if deadline.expired():
                raise _Retryable(f"{url}: no complete response within request_timeout_s = "
                                 f"{self.request_timeout:g} s; abandoned") from None
            raise _Retryable(f"{url}: timed out after {self.timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _Retryable(f"{url}: {type(exc).__name__}: {exc}") from None
        latency = time.monotonic() - started
        if status >= 500 or status in _RETRY_STATUS:
            wait = retry_after_s(retry_header) if status in _RETRY_AFTER_STATUS else None
            rest = f" (Retry-After: {wait:g} s before this URL is tried again)" if wait is not None else ""
            raise _Retryable(f"{url}: HTTP {status}{rest}: {text[:300]}", retry_after=wait)
        if status >= 400:
            raise PrismError(self._scrub(f"{url} refused the request: HTTP {status}: {text[:500]}"))
        try:
            data = json.loads(text)
            choice = data["choices"][0]
            content = choice["message"].get("content") if chat else choice["text"]
            usage = data.get("usage") or {}
            prompt_tokens = _count(usage.get("prompt_tokens"))
            completion_tokens = _count(usage.get("completion_tokens"))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _Retryable(f"{url}: not a {'chat completion' if chat else 'completion'} response: "
                             f"{text[:300]!r}") from None
        finish = choice.get("finish_reason")
        if not isinstance(content, str) or finish not in _FINISHED or (not content and finish != "stop"):
            raise _Retryable(f"{url}: incomplete completion (finish_reason={finish!r}, "
                             f"content={str(content)[:80]!r})")
        if prompt_tokens is None or completion_tokens is None:
            if not self._warned_no_usage:
                self._warned_no_usage = True
                log.warning("%s answers without usage token counts: its responses are not counted (nor seen by a "
                            "token budget or max_tokens_per_minute)", url)
        else:
            ratio = prompt_tokens / max(1, self._prompt_bytes(body))
            with self._lock:
                self._tokens_per_byte = max(self._tokens_per_byte or 0.0, ratio)
            if ticket is not None:
                self.limiter.settle(ticket, prompt_tokens + completion_tokens)
        return Completion(content, prompt_tokens, completion_tokens, round(latency, 4))

    def _rest_left(self, url: str) -> float:
        with self._lock:
            return self._rest_until[url] - time.monotonic()

    @staticmethod
    def _go_on(abort: asyncio.Event, budget: Budget | None) -> None:
        if abort.is_set():
            raise _Aborted
        if budget is not None and budget.reached():
            raise BudgetExhausted("the generation budget is reached")

    async def _admit(self, body: dict[str, Any], start: int, attempt: int, last_failed: str | None,
                     abort: asyncio.Event, budget: Budget | None) -> tuple[str, Any]:
        """(URL, rate-limiter ticket) of an attempt that may be sent now: its URL's rest is over (a
        retry also waits the jittered backoff `backoff` · 2^(attempt − 1), at most `max_backoff`), the
        rate limiter admitted it, and neither `abort` nor the budget stops it. A URL that began to rest
        while the limiter made the attempt wait is not used: the attempt looks again."""
        backed_off = False
        while True:
            self._go_on(abort, budget)
            url, rested = self._pick(start, attempt, last_failed)
            delay = max(0.0, self._rest_left(url)) if rested else 0.0
            if attempt and not backed_off and (rested or url == last_failed):
                backed_off = True
                backoff = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                delay = max(delay, backoff * (0.5 + random.random() / 2))
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            ticket = await self.limiter.acquire(lambda: self.estimate(body)) if self.limiter is not None else None
            self._go_on(abort, budget)
            if self._rest_left(url) <= 0:
                return url, ticket

    async def _complete(self, client: Any, request: GenerationRequest, start: int, abort: asyncio.Event,
                        budget: Budget | None) -> Completion:
        body = self.body(request)
        last_failed: str | None = None
        error = ""
        for attempt in range(self.max_retries + 1):
            url, ticket = await self._admit(body, start, attempt, last_failed, abort, budget)
            try:
                completion = await self._attempt(client, url, body, ticket)
            except _Retryable as exc:
                self._record(url, ok=False, retry_after=exc.retry_after)
                error = self._scrub(str(exc))
                last_failed = url
                if attempt < self.max_retries:
                    log.warning("request %s failed on %s (%s); retrying", request.key[:12], url, error)
                continue
            except PrismError:
                self._record(url, ok=False)
                abort.set()  # the other requests send nothing more
                raise
            self._record(url, ok=True, tokens=completion.completion_tokens or 0)
            return completion
        abort.set()
        raise PrismError(f"request {request.key[:12]} failed after {self.max_retries + 1} attempts; "
                         f"last error: {error}")

    def generate(self, requests: Sequence[GenerationRequest], on_results: ResultCallback | None = None,
                 budget: Budget | None = None) -> list[str]:
        """Run all requests (at most `max_concurrency` at once); on a request that fails for good, send
        nothing more, let the attempts in flight end (each within `request_timeout`), report what
        finished, and raise `PrismError`. Each response is reported to `on_results` as a `Completion`
        (text, tokens, latency) as it arrives. With `budget`, once `budget.reached()` no attempt is
        sent: the attempts in flight end, are reported, and `BudgetExhausted` is raised."""
        if not requests:
            return []
        return run_coroutine(self._generate(requests, on_results, budget))

    async def _generate(self, requests: Sequence[GenerationRequest], on_results: ResultCallback | None,
                        budget: Budget | None) -> list[str]:
        texts: list[str | None] = [None] * len(requests)
        abort = asyncio.Event()
        slots = asyncio.Semaphore(self.max_concurrency)
        errors: list[BaseException] = []
        stopped: list[BudgetExhausted] = []

        async def one(position: int, request: GenerationRequest, start: int) -> None:
            try:
                async with slots:
                    completion = await self._complete(client, request, start, abort, budget)
                texts[position] = completion.text
                if on_results is not None:  # before any other task runs: a budget sees this response
                    on_results([(position, completion)])
            except _Aborted:
                pass
            except BudgetExhausted as exc:  # no new sends; those in flight finish
                stopped.append(exc)
            except Exception as exc:  # the first failure is raised; the others stop sending
                abort.set()
                errors.append(exc)

        async with self._http() as client:
            await asyncio.gather(*(one(i, request, next(self._next)) for i, request in enumerate(requests)))
        if errors:
            raise errors[0]
        if stopped:
            raise stopped[0]
        return [t if t is not None else "" for t in texts]


def _count(value: Any) -> int | None:
    """A usage count: a non-negative int, else None (missing or not a count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
