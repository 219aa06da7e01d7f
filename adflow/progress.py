"""Progress lines for long work: which stage, how far, time so far.

Lines go to stdout, which the KFP local runner streams with the task's name, and which a cluster's pod
logs keep. Throttled so a million-step loop prints a few dozen lines, not a million.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    def __init__(self, stage: str, step: str, total: int | None = None, every_s: float = 2.0) -> None:
        self.stage, self.step, self.total, self.every_s = stage, step, total, every_s
        self.start = time.perf_counter()
        self.done = 0
        self._last = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every_s or (self.total is not None and self.done >= self.total):
            self._last = now
            self._emit()

    def _emit(self, note: str = "") -> None:
        elapsed = time.perf_counter() - self.start
        if self.total:
            pct = 100.0 * self.done / self.total
            how_far = f"{self.done}/{self.total} ({pct:.0f}%)"
        else:
            how_far = str(self.done)
        print(f"[{self.stage}] {self.step}: {how_far} {elapsed:.1f}s{' ' + note if note else ''}", flush=True)

    def finish(self, note: str = "") -> float:
        elapsed = time.perf_counter() - self.start
        print(f"[{self.stage}] {self.step}: done in {elapsed:.1f}s{' ' + note if note else ''}", flush=True)
        return elapsed


def track(items: Iterable[T], stage: str, step: str, total: int | None = None) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    p = Progress(stage, step, total)
    for x in items:
        yield x
        p.advance()


def log(stage: str, message: str) -> None:
    print(f"[{stage}] {message}", file=sys.stdout, flush=True)
