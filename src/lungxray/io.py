"""Small I/O helpers: atomic writes so that an interrupted stage never leaves a file that looks complete, and
progress bars that stay short in a log."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
from tqdm import tqdm


log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed over ``path`` in one step.

    If the body raises (or the process dies), the temporary file is removed (or left with a ``.tmp`` suffix that no
    stage reads), and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def write_csv(path: str | os.PathLike, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_fingerprints(paths: list[str | os.PathLike]) -> dict[str, str]:
    """``{path: sha256 of its bytes}``: what a report records to say which inputs it was computed on."""
    return {Path(p).as_posix(): sha256_file(p) for p in paths}


class KeyValueStore:
    """A persistent ``key -> bytes`` cache in SQLite (Python's standard library), for work that must survive an
    interruption: each :meth:`put` is committed at once, and SQLite's write-ahead log means a killed writer (even
    ``kill -9``) leaves the last committed state, never a torn record. ``version`` names the format and whatever the
    values depend on: a store written under another version, or a file that is not a readable store, is started
    afresh (it is only a cache).
    """

    def __init__(self, path: str | os.PathLike, version: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open(version)
        except sqlite3.DatabaseError as e:
            log.warning("%s is not a readable cache (%s): starting it afresh", self.path, e)
            for leftover in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                leftover.unlink(missing_ok=True)
            self._db = self._open(version)

    def _open(self, version: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: every put is its own transaction
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS meta (version TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
            if db.execute("SELECT version FROM meta").fetchall() != [(version,)]:
                with db:
                    db.execute("BEGIN")
                    db.execute("DELETE FROM meta")
                    db.execute("DELETE FROM kv")
                    db.execute("INSERT INTO meta VALUES (?)", (version,))
            db.execute("SELECT count(*) FROM kv").fetchone()  # a damaged file fails here, not later
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def items(self) -> dict[str, bytes]:
        return {k: bytes(v) for k, v in self._db.execute("SELECT key, value FROM kv")}

    def put(self, key: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self._db.close()


# ----------------------------------------------------------------------------------------------------------------------
# progress bars

LOG_INTERVAL_S = 60.0  # seconds between two redraws of a bar written to a file or a CI log (not a terminal)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable=None, *, file=None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on ``file`` (default stderr). On a terminal the bar is redrawn as tqdm does; in a
    file or a CI log, where every redraw (a ``\\r`` and the whole bar) stays in the text, at most every
    ``LOG_INTERVAL_S`` seconds (plus the start and the end), so that a long stage leaves a few lines, not 100 kB."""
    stream = sys.stderr if file is None else file
    if not _is_terminal(stream):
        kwargs["mininterval"] = max(kwargs.get("mininterval", 0.1), LOG_INTERVAL_S)
        kwargs["maxinterval"] = max(kwargs.get("maxinterval", 10.0), LOG_INTERVAL_S)
    return tqdm(iterable, file=stream, **kwargs)
