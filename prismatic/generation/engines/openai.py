"""`OpenAIEngine`: chat completions on OpenAI-compatible servers (e.g. `vllm serve`).

Requests are spread round-robin over several base URLs, with bounded concurrency and retries with
exponential backoff (attempt a waits `backoff · 2^(a−1)` seconds, jittered to 50–100 %, at most
`max_backoff`); a failing URL is rested the same way and its requests move to the others. The API
key is never put in errors or logs.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Self

from prismatic.errors import PrismError
from prismatic.generation.engines.base import ResultCallback
from prismatic.generation.requests import GenerationRequest

log = logging.getLogger(__name__)


@dataclass
class EndpointStats:
    """What one base URL did: attempts sent, successes, failures, tokens generated."""

    url: str
    sent: int = 0
    ok: int = 0
    failed: int = 0
    output_tokens: int = 0


class _Retryable(Exception):
    """A failure another attempt may not have: timeout, connection error, 5xx, 429, bad body."""


class _Aborted(Exception):
    """The call is being abandoned because another request failed for good."""


_RETRY_STATUS = {408, 425, 429}
_FINISHED = {"stop", "length"}
"""finish_reason of a completion that ran to its end; others (None, "abort", "error") are retried."""


class OpenAIEngine:
    """Chat completions on OpenAI-compatible servers (`POST {base_url}/chat/completions`; a raw-text
    request, `GenerationRequest.prompt`, goes to `POST {base_url}/completions`).

    base_urls: e.g. `["http://gpu1:8000/v1", "http://gpu2:8000/v1"]`; request i starts on URL
      i mod n, and a URL that fails is rested (exponential cool-down) while others take its work.
    model: the served model name.
    max_concurrency: requests in flight at once (threads).
    max_retries: further attempts after the first, on timeouts, connection errors (a server that
      restarts), 5xx and 429, bodies that are not a (chat) completion, and incomplete completions
      (content null, or finish_reason other than "stop"/"length", as when a server aborts requests
      on shutdown), with exponential backoff (`backoff` · 2^attempt seconds, jittered, at most
      `max_backoff`). Other 4xx answers fail at once: retrying a bad request does not help. An
      empty text with finish_reason "stop" is the model's answer (a seeded retry would repeat it)
      and is returned; the caller's parser rejects it.
    timeout: seconds per attempt.
    `choices` are sent as vLLM's `structured_outputs: {"choice": [...]}` (vLLM ≥ 0.11 servers);
    `json_schema` as the standard `response_format: {"type": "json_schema", ...}`.
    """

    def __init__(self, base_urls: Sequence[str], model: str, api_key: str | None = None,
                 max_concurrency: int = 8, max_retries: int = 4, timeout: float = 120.0,
                 backoff: float = 0.5, max_backoff: float = 30.0):
        if isinstance(base_urls, str):
            base_urls = [base_urls]
        urls = [u.rstrip("/") for u in base_urls]
        if not urls:
            raise PrismError("the openai generator needs at least one base URL")
        if len(set(urls)) != len(urls):
            raise PrismError("the openai generator's base URLs must be distinct")
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise PrismError("max_concurrency must be ≥ 1, max_retries ≥ 0 and timeout > 0")
        self.base_urls = urls
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.output_tokens = 0
        self.completed = 0
        self.endpoint_stats = {url: EndpointStats(url) for url in urls}
        self._api_key = api_key or None
        self._lock = threading.Lock()
        self._next = itertools.count()
        self._rest_until = dict.fromkeys(urls, 0.0)
        self._failures = dict.fromkeys(urls, 0)
        self._client: Any = None

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return f"OpenAIEngine(base_urls={self.base_urls!r}, model={self.model!r}, api_key={key})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _http(self) -> Any:
        if self._client is None:
            try:
                import httpx
            except ImportError:
                raise PrismError("the openai generator needs the `httpx` package") from None

            headers = {"Content-Type": "application/json"}
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
            self._client = httpx.Client(
                headers=headers, timeout=self.timeout,
                limits=httpx.Limits(max_connections=self.max_concurrency * len(self.base_urls),
                                    max_keepalive_connections=self.max_concurrency * len(self.base_urls)))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

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

    def _record(self, url: str, ok: bool, tokens: int = 0) -> None:
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
                self._rest_until[url] = time.monotonic() + rest

    def _attempt(self, url: str, body: dict[str, Any]) -> tuple[str, int]:
        import httpx

        chat = "messages" in body  # else a raw-text completion (`body`)
        with self._lock:
            self.endpoint_stats[url].sent += 1
        try:
            response = self._http().post(f"{url}/{'chat/completions' if chat else 'completions'}", json=body)
        except httpx.TimeoutException:
            raise _Retryable(f"{url}: timed out after {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise _Retryable(f"{url}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 500 or response.status_code in _RETRY_STATUS:
            raise _Retryable(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
        if response.status_code >= 400:
            raise PrismError(self._scrub(f"{url} refused the request: HTTP {response.status_code}: "
                                         f"{response.text[:500]}"))
        try:
            data = response.json()
            choice = data["choices"][0]
            content = choice["message"].get("content") if chat else choice["text"]
            tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _Retryable(f"{url}: not a {'chat completion' if chat else 'completion'} response: "
                             f"{response.text[:300]!r}") from None
        finish = choice.get("finish_reason")
        if not isinstance(content, str) or finish not in _FINISHED or (not content and finish != "stop"):
            raise _Retryable(f"{url}: incomplete completion (finish_reason={finish!r}, "
                             f"content={str(content)[:80]!r})")
        return content, tokens

    def _complete(self, request: GenerationRequest, start: int, abort: threading.Event) -> str:
        body = self.body(request)
        last_failed: str | None = None
        error = ""
        for attempt in range(self.max_retries + 1):
            if abort.is_set():
                raise _Aborted
            url, rested = self._pick(start, attempt, last_failed)
            if attempt and (rested or url == last_failed):
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
                if abort.is_set():
                    raise _Aborted
            try:
                text, tokens = self._attempt(url, body)
            except _Retryable as exc:
                self._record(url, ok=False)
                error = self._scrub(str(exc))
                last_failed = url
                if attempt < self.max_retries:
                    log.warning("request %s failed on %s (%s); retrying", request.key[:12], url, error)
                continue
            except PrismError:
                self._record(url, ok=False)
                abort.set()  # stop the other workers before they take another request
                raise
            self._record(url, ok=True, tokens=tokens)
            return text
        abort.set()
        raise PrismError(f"request {request.key[:12]} failed after {self.max_retries + 1} attempts; "
                         f"last error: {error}")

    def generate(self, requests: Sequence[GenerationRequest],
                 on_results: ResultCallback | None = None) -> list[str]:
        """Run all requests; on a request that fails for good, stop sending new ones, report what
        finished, and raise `PrismError`."""
        if not requests:
            return []
        texts: list[str | None] = [None] * len(requests)
        abort = threading.Event()
        error: BaseException | None = None
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="prism-openai")
        try:
            futures = {pool.submit(self._complete, request, next(self._next), abort): i
                       for i, request in enumerate(requests)}
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                exc = future.exception()
                if exc is not None:
                    if error is None and not isinstance(exc, _Aborted):
                        error = exc
                        abort.set()
                        for other in futures:
                            other.cancel()
                    continue
                position = futures[future]
                texts[position] = future.result()
                if on_results is not None:
                    on_results([(position, texts[position])])
        except BaseException:
            abort.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if error is not None:
            raise error
        return [t if t is not None else "" for t in texts]
