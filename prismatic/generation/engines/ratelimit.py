"""`RateLimiter`: requests and tokens per minute, shared by every URL of an `OpenAIEngine`.

A sliding window (a log of the sends of the last `window_s` seconds, not a token bucket): a send is
admitted only when, counting it, the sends of the last `window_s` seconds number at most `requests`
and their tokens at most `tokens`. So any `window_s`-long stretch of time sees at most `requests`
sends (a bucket of that size, refilled continuously, would allow twice as many in its first window).

The tokens of a request are known only when its response comes: a send is charged an estimate (its
prompt's estimated tokens plus `max_tokens`, `OpenAIEngine.estimate`), which `settle` replaces by the
server's count (prompt + completion) when the response arrives. A request whose estimate alone is
above `tokens` is sent once the window is empty (else it could never be sent).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque


class _Send:
    """One send: when (monotonic seconds), the tokens charged, and whether it is still in the window."""

    __slots__ = ("at", "tokens", "live")

    def __init__(self, at: float, tokens: int):
        self.at = at
        self.tokens = tokens
        self.live = True


class RateLimiter:
    """At most `requests` sends and `tokens` tokens in any `window_s` seconds (None: that limit is off).

    `acquire` waits (asyncio) until a send fits and records it; `settle` corrects its tokens. One
    limiter may serve several event loops in turn (its state is guarded by a thread lock and it
    holds no loop objects).
    """

    def __init__(self, requests: int | None = None, tokens: int | None = None, window_s: float = 60.0):
        if requests is not None and requests < 1 or tokens is not None and tokens < 1 or window_s <= 0:
            raise ValueError("rate limits must be ≥ 1 and the window > 0 seconds")
        self.requests = requests
        self.tokens = tokens
        self.window_s = window_s
        self._sends: deque[_Send] = deque()
        self._window_tokens = 0
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self._sends and self._sends[0].at <= now - self.window_s:
            send = self._sends.popleft()
            send.live = False
            self._window_tokens -= send.tokens

    def _wait_for(self, estimate: int, now: float) -> float:
        """Seconds until a send of `estimate` tokens fits (0: it fits now). Call with the lock held."""
        self._expire(now)
        wait = 0.0
        if self.requests is not None and len(self._sends) >= self.requests:
            # the oldest sends must leave until requests − 1 remain
            wait = self._sends[len(self._sends) - self.requests].at + self.window_s - now
        if self.tokens is not None and self._sends and self._window_tokens + estimate > self.tokens:
            left = self._window_tokens
            for send in self._sends:  # oldest first: when enough has left the window
                left -= send.tokens
                if left + estimate <= self.tokens or left <= 0:
                    wait = max(wait, send.at + self.window_s - now)
                    break
        return max(wait, 0.0)

    async def acquire(self, estimate: int = 0) -> _Send:
        """Wait until a send charged `estimate` tokens fits both limits, record it and return its entry
        (for `settle`)."""
        while True:
            with self._lock:
                now = time.monotonic()
                wait = self._wait_for(estimate, now)
                if wait <= 0:
                    send = _Send(now, estimate)
                    self._sends.append(send)
                    self._window_tokens += estimate
                    return send
            await asyncio.sleep(wait)

    def settle(self, send: _Send, tokens: int) -> None:
        """Replace a send's estimate by the tokens it used (a send already out of the window is gone)."""
        with self._lock:
            if send.live:
                self._window_tokens += tokens - send.tokens
            send.tokens = tokens
