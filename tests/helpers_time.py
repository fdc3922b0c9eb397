"""A time limit for blocks that could hang (FIFOs, endless files, stuck requests)."""

from __future__ import annotations

import contextlib
import signal


@contextlib.contextmanager
def within(seconds: int):
    """Fail (instead of hanging the suite) when the block takes longer than `seconds`."""

    def expired(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s: hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
