"""Progress lines for long work: which stage, how far, time so far.

Lines go to stdout, which the KFP local runner streams with the task's name, and which a cluster's pod
logs keep. Throttled so a million-step loop prints a few dozen lines, not a million.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

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


@contextmanager
def follow(
    path: str | Path,
    stage: str,
    render: Callable[[dict[str, Any]], str | None],
    every_s: float = 2.0,
    start: int = 0,
) -> Iterator[None]:
    """While the block runs, print a line for every JSON line appended to `path` (`render` makes it; None
    skips it). Ray workers' stdout does not reach the driver (log_to_driver is off), so training loops write
    their progress to a history file and the driver follows it. `start`: lines already there (a resumed run)."""
    import json
    import threading

    stop = threading.Event()
    src = Path(path)
    seen = start

    def emit() -> None:
        nonlocal seen
        if not src.exists():
            return
        lines = src.read_text().splitlines()
        for line in lines[seen:]:
            try:
                row = json.loads(line)
            except ValueError:  # a line still being written: read it next time
                break
            seen += 1
            try:
                text = render(row)
            except Exception:  # a progress line must never stop the training it reports on
                continue
            if text:
                log(stage, text)

    def loop() -> None:
        while not stop.wait(every_s):
            emit()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        emit()
