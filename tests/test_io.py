"""Small I/O helpers: progress bars that stay short in a log."""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path

import tqdm.std

from lungxray.io import LOG_INTERVAL_S, progress_bar

SRC = Path(__file__).resolve().parents[1] / "src" / "lungxray"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def slow_clock(monkeypatch, step_s: float = 0.05) -> None:
    """tqdm's clock advances ``step_s`` at each reading: 10k quick items look like minutes of work."""
    ticks = itertools.count()
    monkeypatch.setattr(tqdm.std, "time", lambda: next(ticks) * step_s)


def test_a_bar_written_to_a_log_updates_a_few_times_not_every_tenth_of_a_second(monkeypatch):
    slow_clock(monkeypatch)
    log = io.StringIO()
    for _ in progress_bar(range(10_000), file=log, desc="probe", mininterval=1.0):
        pass
    updates = log.getvalue().count("\r")
    assert 2 <= updates <= 6, log.getvalue()  # the start, one or two in between, the end
    assert "10000/10000" in log.getvalue().rsplit("\r", 1)[1]  # the last update is the finished bar


def test_a_bar_on_a_terminal_refreshes_as_tqdm_does():
    assert progress_bar(range(3), file=Terminal(), mininterval=1.0).mininterval == 1.0
    assert progress_bar(range(3), file=Terminal()).mininterval == tqdm.std.tqdm(range(3), file=Terminal()).mininterval
    assert progress_bar(range(3), file=io.StringIO()).mininterval == LOG_INTERVAL_S


def test_every_progress_bar_goes_through_the_one_helper():
    direct = [str(f.relative_to(SRC)) for f in SRC.rglob("*.py") if f.name != "io.py"
              and re.search(r"^\s*(from tqdm|import tqdm)", f.read_text(), re.M)]
    assert direct == [], f"use lungxray.io.progress_bar instead of tqdm in {direct}"
