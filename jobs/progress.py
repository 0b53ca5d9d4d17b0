"""One-line progress for long jobs: rewritten in place on a terminal, a line every few seconds otherwise."""

from __future__ import annotations

import sys
import time


class ProgressLine:
    """Prints `label: done/total ... rate` as work completes; call `update` often, `close` once."""

    def __init__(self, label: str, total: int | None, unit: str = "images", stream=None, every_s: float = 5.0):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every_s = every_s if not self.tty else 0.2
        self.started = time.perf_counter()
        self.last = 0.0
        self.done = 0
        self.extra = ""
        self.shown = None  # (done, extra) last printed

    def update(self, done: int, extra: str = "") -> None:
        self.done, self.extra = done, extra
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self._print(end="\r" if self.tty else "\n")

    def close(self) -> None:
        if self.tty or self.shown != (self.done, self.extra):
            self._print(end="\n")

    def _print(self, end: str) -> None:
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total is not None else ""
        extra = f", {self.extra}" if self.extra else ""
        text = f"{self.label}: {self.done}{of} {self.unit}{extra} ({rate:.1f} {self.unit}/s, {elapsed:.0f} s)"
        self.shown = (self.done, self.extra)
        self.stream.write(("\x1b[2K" if self.tty else "") + text + end)
        self.stream.flush()
