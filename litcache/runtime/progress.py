"""Progress of long loops: a tqdm bar on a terminal, else a plain line every few seconds.

Carriage-return bars in a log file (``make demo > log``, CI) pile up as one long line of redraws,
so a stream that is not a terminal gets whole lines at most every ``PLAIN_INTERVAL`` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

__all__ = ["PLAIN_INTERVAL", "PlainProgress", "progress_bar"]

#: Seconds between two plain progress lines.
PLAIN_INTERVAL = 10.0


class PlainProgress:
    """The part of tqdm's interface litcache uses (update, set_postfix_str, close), written as
    plain lines: one at most every ``interval`` seconds of ``clock``, and one at the end."""

    def __init__(self, total: int | None, unit: str = "it", desc: str = "", file: TextIO | None = None,
                 interval: float = PLAIN_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.unit, self.desc, self.interval, self.clock = total, unit, desc, interval, clock
        self.file = file if file is not None else sys.stderr
        self.n, self.postfix = 0, ""
        self.start = self.last = clock()
        self._written_n = 0
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval:
            self._write(now)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if not self.closed and self.n != self._written_n:
            self._write(self.clock())
        self.closed = True

    def _write(self, now: float) -> None:
        elapsed = now - self.start
        done = (f"{self.n:,}/{self.total:,} {self.unit}s ({100 * self.n / self.total:.0f}%)" if self.total
                else f"{self.n:,} {self.unit}s")
        parts = [done, f"{elapsed:.0f} s"]
        if self.total and 0 < self.n < self.total and elapsed > 0:
            parts.append(f"about {(self.total - self.n) * elapsed / self.n:.0f} s left")
        if self.postfix:
            parts.append(self.postfix)
        self.file.write((f"{self.desc}: " if self.desc else "") + ", ".join(parts) + "\n")
        self.file.flush()
        self.last, self._written_n = now, self.n

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(total: int | None, unit: str = "it", desc: str = "", enabled: bool = True, file: TextIO | None = None,
                 interval: float = PLAIN_INTERVAL, clock: Callable[[], float] = time.monotonic):
    """A tqdm bar when ``file`` (default: stderr) is a terminal, else a ``PlainProgress``; disabled
    (it prints nothing) unless ``enabled``."""
    from tqdm import tqdm

    file = file if file is not None else sys.stderr
    if not enabled:
        return tqdm(total=total, disable=True)
    if _is_terminal(file):
        return tqdm(total=total, unit=unit, desc=desc or None, file=file, dynamic_ncols=True)
    return PlainProgress(total, unit=unit, desc=desc, file=file, interval=interval, clock=clock)
