"""Progress bars that behave both in a terminal and in captured logs.

In a terminal the bar redraws in place as usual. When stderr is not a tty (Kubeflow
pods, CI, `> log.txt`), tqdm's carriage-return redraws would pile up into one
enormous line, so there each update is written as its own line, at most every
10 seconds, plus the final state when the bar closes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

#: seconds between updates when stderr is a log file or pipe rather than a terminal
NON_TTY_INTERVAL = 10.0
#: bar width in logs, where tqdm cannot ask a terminal for one
NON_TTY_COLUMNS = 100


class _LineWriter:
    """File wrapper that turns tqdm's '\\r'-redraws into one line per update."""

    def __init__(self, stream: IO[str]):
        self._stream = stream

    def write(self, text: str) -> int:
        # tqdm pads redraws with spaces and writes bare '\r' / '\n' to clear or
        # leave the bar: keep only the text.
        line = text.replace("\r", "").rstrip()
        if line:
            self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or exotic streams
        return False


def progress(
    iterable: Iterable[Any] | None = None,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    **tqdm_kwargs: Any,
) -> tqdm:
    """A tqdm bar on stderr; in non-tty logs one line per update every 10 s.

    Extra keyword arguments go to tqdm (e.g. `initial=`, `unit_scale=True` for bytes).
    Use it like tqdm: wrap an iterable, or call `.update(n)` and close it (a `with`
    block does).
    """
    stream = sys.stderr
    if _is_tty(stream):
        options: dict[str, Any] = {"file": stream, "dynamic_ncols": True}
    else:
        options = {
            "file": _LineWriter(stream),
            "mininterval": NON_TTY_INTERVAL,
            "ncols": NON_TTY_COLUMNS,
            "ascii": True,
        }
    options.update(tqdm_kwargs)
    return tqdm(iterable, total=total, desc=desc, unit=unit, **options)
