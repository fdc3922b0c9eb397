"""Bounded calls through the OpenAPI-generated clients this project uses (the Kubernetes
Python client for deploy, kfp_server_api under kfp.Client for submit/upload).

Both generated `rest.py` files take a per-call `_request_timeout` and hand it to urllib3;
with none they pass `timeout=None`, which urllib3 reads as "wait forever" (it overrides
any timeout set on the pool), so a server that accepts the connection and never answers
hangs the caller. Two traps in that code shape what is passed here:
- a bare float is silently ignored (only an int or a (connect, read) tuple is used), so
  the timeout is always a tuple of floats;
- urllib3 sends a GET again after a read timeout (its default Retry allows 3 retries), so
  one call can take (1 + retries) x the timeout: the budget is split across the attempts.
"""

from __future__ import annotations

import time
from typing import Any, Callable

MAX_CONNECT_S = 10.0  # a TCP connect to a reachable API server takes milliseconds


def attempts(retries: Any = None) -> int:
    """How many times urllib3 may send one request that keeps timing out, for a client
    Configuration's `retries` (None: urllib3's default Retry(3))."""
    from urllib3.util.retry import Retry

    retry = Retry.from_int(retries)
    if retry.total is False:
        return 1
    counts = [c for c in (retry.total, retry.read, retry.connect) if isinstance(c, int) and not isinstance(c, bool)]
    return 1 + max(0, min(counts)) if counts else 1 + 3


def request_timeout(budget_s: float, retries: Any = None) -> tuple[float, float]:
    """`_request_timeout` (connect, read) so that one call, retries included, ends within
    `budget_s` seconds."""
    per_attempt = max(0.05, budget_s / attempts(retries))
    connect = min(MAX_CONNECT_S, per_attempt / 2)
    return connect, per_attempt - connect


class Deadline:
    """A total deadline shared by a sequence of API calls."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = float(seconds)
        self.clock = clock
        self.end = clock() + self.seconds

    def remaining(self) -> float:
        return max(0.0, self.end - self.clock())

    def expired(self) -> bool:
        return self.clock() >= self.end

    def timeout(self, retries: Any = None, cap_s: float | None = None) -> tuple[float, float]:
        budget = self.remaining() if cap_s is None else min(self.remaining(), cap_s)
        return request_timeout(budget, retries)


def failure(exc: BaseException) -> str:
    """A short reason for a urllib3 / socket failure: `ReadTimeoutError`, `NewConnectionError`
    (urllib3 wraps the cause of a failed retry in MaxRetryError.reason; its own message
    spells out the pool's repr and the whole path)."""
    reason = getattr(exc, "reason", None)
    cause = reason if isinstance(reason, BaseException) else exc
    return type(cause).__name__
