"""Small I/O helpers: progress bars that stay short in a log; a write that fails (a full disk) is one clear error and
leaves nothing partial."""

from __future__ import annotations

import errno
import io
import itertools
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tqdm.std

import lungxray.core.io
from lungxray.core.errors import DiskFullError, LungxrayError, WriteError
from lungxray.core.io import LOG_INTERVAL_S, atomic_path, progress_bar, write_csv

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
    assert direct == [], f"use lungxray.core.io.progress_bar instead of tqdm in {direct}"



# ------------------------------------------------------------------------------------------------- a write that fails

def no_space() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


# what each writer raises when the disk fills under it (seen on a 1 MB tmpfs): torch.save, np.save, pandas / open()
WRITE_FAILURES = {
    "torch": lambda: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1703936 vs 1703832"),
    "torch-iostream": lambda: RuntimeError("basic_ios::clear: iostream error"),
    "numpy": lambda: OSError("600000 requested and 131056 written"),
    "open": no_space,
}


@pytest.fixture
def free_space(monkeypatch):
    """Set how many bytes the file system of any folder has left (12 kB unless a test says otherwise)."""
    left = {"bytes": 12_000}
    monkeypatch.setattr(lungxray.core.io, "free_bytes", lambda folder: left["bytes"])
    return left


@pytest.mark.parametrize("writer", sorted(WRITE_FAILURES))
def test_a_write_that_fills_the_disk_is_one_line_naming_the_folder_the_free_space_and_what_to_do(tmp_path,
                                                                                                 free_space, writer):
    target = tmp_path / "models" / "cnn5" / "checkpoint.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"the previous epoch")
    with pytest.raises(DiskFullError) as e:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 1000)  # part of it was written
            raise WRITE_FAILURES[writer]()
    msg = str(e.value)
    assert isinstance(e.value, LungxrayError) and "\n" not in msg
    assert "no space left" in msg and str(target) in msg
    assert re.search(rf"1[26]\.\d kB free in {re.escape(str(target.parent))} once the partial file is removed", msg)
    assert "free space" in msg and "rerun" in msg
    assert target.read_bytes() == b"the previous epoch" and os.listdir(target.parent) == ["checkpoint.pt"]


def test_a_write_that_fails_with_space_left_names_the_reason_and_the_folder(tmp_path, free_space):
    free_space["bytes"] = 50 * 10**9
    with pytest.raises(WriteError) as e:
        with atomic_path(tmp_path / "m" / "model.pt") as tmp:
            tmp.write_bytes(b"x")
            raise OSError(errno.EROFS, "Read-only file system")
    msg = str(e.value)
    assert not isinstance(e.value, DiskFullError) and "\n" not in msg
    assert f"cannot write {tmp_path / 'm' / 'model.pt'}" in msg and "Read-only file system" in msg
    assert re.search(rf"50\.0 GB free in {re.escape(str(tmp_path / 'm'))}\b", msg) and os.listdir(tmp_path / "m") == []
    with pytest.raises(WriteError, match="unexpected pos"):  # torch's words, when the disk is not full
        with atomic_path(tmp_path / "m" / "model.pt"):
            raise WRITE_FAILURES["torch"]()


def test_a_file_that_cannot_even_be_created_on_a_full_disk_is_the_same_error(tmp_path, free_space, monkeypatch):
    def mkstemp(*a, **k):
        raise no_space()

    monkeypatch.setattr(lungxray.core.io.tempfile, "mkstemp", mkstemp)
    with pytest.raises(DiskFullError, match=f"12.0 kB free in {re.escape(str(tmp_path))}"):
        with atomic_path(tmp_path / "eval.json"):
            pass


def test_an_error_that_is_not_a_write_failure_passes_through_unchanged(tmp_path, free_space):
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        with atomic_path(tmp_path / "a.pt"):
            raise RuntimeError("CUDA out of memory")
    with pytest.raises(FileNotFoundError):  # about another file: reading an input, not writing this one
        with atomic_path(tmp_path / "a.pt"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "input.png"))
    with pytest.raises(LungxrayError, match="bad row"):
        with atomic_path(tmp_path / "a.pt"):
            raise LungxrayError("bad row")
    assert os.listdir(tmp_path) == []


def test_predicts_table_and_overlays_on_a_full_disk_are_the_same_clear_error(tmp_path, free_space, monkeypatch):
    """lungxray predict writes its table with write_csv and its Grad-CAM overlays with write_overlays."""
    from matplotlib.figure import Figure

    from lungxray.evaluate.gradcam import write_overlays

    def full(self, path, *a, **k):
        Path(path).write_bytes(b"x" * 100)
        raise no_space()

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with pytest.raises(DiskFullError, match=f"no space left.*{tmp_path / 'out'}"):
        write_csv(tmp_path / "out" / "predictions.csv", pd.DataFrame({"file": ["a.png"]}))
    assert os.listdir(tmp_path / "out") == []
    monkeypatch.setattr(Figure, "savefig", full)
    with pytest.raises(DiskFullError, match=rf"\d+\.\d kB free in {re.escape(str(tmp_path / 'cam'))}"):
        write_overlays(tmp_path / "cam", ["a"], np.zeros((1, 8, 8), np.uint8), np.zeros((1, 8, 8)), ["normal 0.9"])
    assert os.listdir(tmp_path / "cam") == []


def test_free_space_is_that_of_the_nearest_existing_folder(tmp_path):
    import shutil

    assert lungxray.core.io.free_bytes(tmp_path / "not" / "yet") == pytest.approx(shutil.disk_usage(tmp_path).free,
                                                                             rel=0.01)


def test_torch_save_on_a_really_full_file_system_is_the_clear_error(tmp_path):
    import torch

    from helpers.fullfs import small_tmpfs

    with small_tmpfs(tmp_path / "full", "1m") as full:
        with pytest.raises(DiskFullError) as e:
            with atomic_path(full / "checkpoint.pt") as tmp:
                torch.save({"w": torch.zeros(600_000)}, tmp)  # 2.4 MB
        assert f"no space left on the device to write {full / 'checkpoint.pt'}" in str(e.value)
        assert os.listdir(full) == []
