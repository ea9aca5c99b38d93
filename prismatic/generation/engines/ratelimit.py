"""`RateLimiter`: requests and tokens per minute, shared by every URL of an `OpenAIEngine`.

The limits are kept as an even pace (GCRA, the virtual-scheduling form of a token bucket that saves up
no burst): after a send charged c tokens, the next send may go `window_s / requests` seconds later
and `c · window_s / tokens` seconds later, whichever is later; time left unused is not saved up. So

- any `window_s`-long stretch of sending holds at most `requests` sends (they are at least
  `window_s / requests` apart), and at most `tokens` tokens plus those of its last send;
- sends are spread evenly, not sent in bursts at window edges, so a server that counts arrivals in
  its own windows sees the same limits give or take the spread of its network and queueing delays
  (a burst-then-wait scheme can show it up to twice the limit in one window when delays vary).

The tokens of a request are known only when its response comes: a send is charged an estimate (its
prompt's estimated tokens plus `max_tokens`, `OpenAIEngine.estimate`), which `settle` replaces by the
server's count (prompt + completion): the pace moves earlier by what was overestimated, or later by
what was underestimated, never earlier than the last send's own share. A waiting send looks again at
least every `min(1 s, window_s / 20)`, so a settled estimate frees time at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable


class _Send:
    """One send: when (monotonic seconds) and the tokens charged to it."""

    __slots__ = ("at", "tokens")

    def __init__(self, at: float, tokens: int):
        self.at = at
        self.tokens = tokens


class RateLimiter:
    """At most `requests` sends and `tokens` tokens per `window_s` seconds (None: that limit is off).

    `acquire` waits (asyncio) until the pace lets a send go and records it; `settle` corrects its
    tokens. One limiter may serve several event loops in turn (its state is guarded by a thread lock
    and it holds no loop objects).
    """

    def __init__(self, requests: int | None = None, tokens: int | None = None, window_s: float = 60.0):
        if requests is not None and requests < 1 or tokens is not None and tokens < 1 or window_s <= 0:
            raise ValueError("rate limits must be ≥ 1 and the window > 0 seconds")
        self.requests = requests
        self.tokens = tokens
        self.window_s = window_s
        self._per_request = window_s / requests if requests else 0.0
        self._per_token = window_s / tokens if tokens else 0.0
        self._next_request = 0.0
        self._next_token = 0.0
        """Monotonic times from which the request pace and the token pace let the next send go."""
        self._last: _Send | None = None
        self._lock = threading.Lock()

    async def acquire(self, estimate: int | Callable[[], int] = 0) -> _Send:
        """Wait until the pace lets a send charged `estimate` tokens go (a number, or a function giving
        the current estimate), record it and return its entry (for `settle`)."""
        recheck = min(1.0, self.window_s / 20)
        while True:
            cost = estimate() if callable(estimate) else estimate
            with self._lock:
                now = time.monotonic()
                wait = max(self._next_request, self._next_token) - now
                if wait <= 0:
                    send = _Send(now, cost)
                    self._next_request = now + self._per_request
                    self._next_token = now + cost * self._per_token
                    self._last = send
                    return send
            await asyncio.sleep(min(wait, recheck))

    def settle(self, send: _Send, tokens: int) -> None:
        """Replace a send's estimate by the tokens it used: the token pace moves by the difference, but
        never before the end of the last send's own share."""
        with self._lock:
            moved = self._next_token + (tokens - send.tokens) * self._per_token
            send.tokens = tokens
            last = self._last
            self._next_token = max(moved, last.at + last.tokens * self._per_token)
