"""Following a history file that Ray workers append to: every line printed once, in order, even the last ones."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from adflow.progress import follow


def test_follow_prints_each_appended_line_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "history.jsonl"

    def worker() -> None:  # what a training loop on a Ray worker does
        for step in range(1, 6):
            with path.open("a") as f:
                f.write(json.dumps({"step": step, "skip": step == 3}) + "\n")
            time.sleep(0.03)

    with follow(path, "stage", lambda r: None if r["skip"] else f"step {r['step']}", every_s=0.02):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["[stage] step 1", "[stage] step 2", "[stage] step 4", "[stage] step 5"]


def test_follow_without_a_file_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with follow(tmp_path / "never.jsonl", "stage", str, every_s=0.01):
        time.sleep(0.03)
    assert capsys.readouterr().out == ""


def test_follow_skips_the_lines_of_an_earlier_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n")  # a resumed run: its first epoch was printed back then
    with follow(path, "stage", lambda r: f"step {r['step']}", every_s=0.01, start=1), path.open("a") as f:
        f.write(json.dumps({"step": 2}) + "\n")
    assert capsys.readouterr().out.splitlines() == ["[stage] step 2"]


def test_a_line_render_cannot_read_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps({"other": 1}) + "\n" + json.dumps({"step": 2}) + "\n")
    with follow(path, "stage", lambda r: f"step {r['step']}", every_s=0.01):
        pass
    assert capsys.readouterr().out.splitlines() == ["[stage] step 2"]
