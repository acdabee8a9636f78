"""Small I/O helpers: atomic writes so that an interrupted stage never leaves a file that looks complete, a write
that fails (a full disk) turned into one clear error, and progress bars that stay short in a log."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

from lungxray.core.errors import DiskFullError, LungxrayError, WriteError

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed over ``path`` in one step.

    If the body raises (or the process dies), the temporary file is removed (or left with a ``.tmp`` suffix that no
    stage reads), and ``path`` keeps its previous content. A write that fails (a full disk, a read-only file system:
    :func:`writing`) becomes a :class:`~lungxray.core.errors.WriteError` that names ``path``, its folder and the free
    space there, whatever the writer (``torch.save``, ``np.save``, pandas, matplotlib, ``open``).
    """
    path = Path(path)
    with writing(path):  # a full disk may refuse even the new file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with writing(path, cleanup=lambda: tmp_path.unlink(missing_ok=True), partial=tmp_path):
            os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual permissions
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)  # also when the body never resumed (the generator closed)


# ---------------------------------------------------------------------------------------------------------------------
# a write that fails

# torch.save writes through a C++ stream that reports no errno when the disk fills: "[enforce fail at
# inline_container.cc:672] . unexpected pos 1703936 vs 1703832", "basic_ios::clear: iostream error",
# "PytorchStreamWriter failed writing file data/0: file write failed"
_TORCH_WRITE_FAILED = re.compile(r"unexpected pos|iostream error|PytorchStreamWriter failed|file write failed")
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
FULL_BELOW = 1 << 20  # bytes free under which a write that failed without saying why failed for want of space


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes that can still be written on the file system of ``folder`` (of its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def size_text(n: float) -> str:
    """``n`` bytes for a person: ``512 B``, ``12.0 kB``, ``1.7 MB``, ``50.0 GB`` (powers of 1000, as ``df -H``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def _about(err: OSError, target: Path) -> bool:
    """Whether ``err`` concerns ``target`` (the file, its temporary sibling of :func:`atomic_path`, or a file inside
    the folder ``target``) rather than another file, e.g. an input being read; an error without a file name is taken
    as the write's."""
    if err.filename is None:
        return True
    p, t = Path(os.fsdecode(err.filename)).absolute(), target.absolute()
    return p == t or t in p.parents or (p.parent == t.parent and p.name.startswith(f".{t.name}."))


def _write_failure(err: BaseException, target: Path, folder: Path) -> str | None:
    """``"full"`` when ``err`` (raised while writing ``target``) means that no space was left, ``"failed"`` for
    another failed write, ``None`` when it is not a failed write of ``target`` (it then passes unchanged)."""
    if isinstance(err, LungxrayError):
        return None
    if isinstance(err, OSError):
        if err.errno in _DISK_FULL_ERRNOS:
            return "full"
        if not _about(err, target):
            return None
    elif not (isinstance(err, RuntimeError) and _TORCH_WRITE_FAILED.search(str(err))):
        return None
    if isinstance(err, OSError) and err.errno is not None:  # the OS said why: a read-only file system, ...
        return "failed"
    return "full" if free_bytes(folder) < FULL_BELOW else "failed"  # np.save and torch.save do not say why


def _allocated(partial: Path | None) -> int:
    """Bytes of disk that the file or folder ``partial`` holds (0 when it is not there)."""
    if partial is None or not partial.exists():
        return 0
    files = [partial] if partial.is_file() else [f for f in partial.rglob("*") if f.is_file()]
    return sum(f.stat().st_blocks * 512 for f in files)


def _write_error(kind: str, err: BaseException, target: Path, folder: Path, what: str, free: int) -> WriteError:
    free = size_text(free)
    if kind == "full":
        return DiskFullError(f"no space left on the device to write {target}: {free} free in {folder} once the "
                             f"partial {what} is removed, less than it needs; free space on that disk (or put "
                             f"{folder} on a larger one) and rerun")
    reason = (err.strerror if isinstance(err, OSError) and err.strerror else str(err)).strip().splitlines()
    reason = " ".join(reason[:1])[:200] or type(err).__name__
    return WriteError(f"cannot write {target}: {reason} ({free} free in {folder}); the partial {what} is removed: "
                      f"check that folder (a read-only or failing disk, its permissions) and rerun")


@contextmanager
def writing(target: str | os.PathLike, cleanup: Callable[[], None] | None = None, folder: bool = False,
            partial: str | os.PathLike | None = None) -> Iterator[None]:
    """The body writes ``target`` (a file, or with ``folder`` a folder of files) into ``partial`` (a temporary
    file or folder). When it raises, ``cleanup`` removes ``partial``, then a failed write becomes one
    :class:`~lungxray.core.errors.WriteError` line that names ``target``, its folder and the free space there once the
    partial output is gone, and says what to do: :class:`~lungxray.core.errors.DiskFullError` for a full disk
    (``ENOSPC``/``EDQUOT``, or torch's and numpy's errors that give no reason, with under ``FULL_BELOW`` bytes left).
    Any other exception (an error about another file, a :class:`~lungxray.core.errors.LungxrayError`, Ctrl-C) passes
    unchanged, after the cleanup."""
    target = Path(target)
    where = target if folder else target.parent
    try:
        yield
    except BaseException as e:
        kind = _write_failure(e, target, where)  # judged before the cleanup frees the space
        if kind is not None:
            # a writer that failed may hold its file open (torch's, until the exception is gone): its space counts
            # as free once it is removed
            free, held = free_bytes(where), _allocated(Path(partial) if partial is not None else None)
        if cleanup is not None:
            cleanup()
        if kind is None:
            raise
        free = max(free_bytes(where), free + held)
        raise _write_error(kind, e, target, where, "output" if folder else "file", free) from e


def allocate_npy(path: str | os.PathLike, shape: tuple[int, ...], dtype=np.uint8) -> None:
    """Write an ``.npy`` file of zeros of ``shape`` whose every byte is given disk space now (``posix_fallocate``):
    rows written later through a memory map cannot fail, where on a full disk they would kill the writing process
    (``SIGBUS``) without a message. No space is an ``OSError`` here (``ENOSPC``: :func:`writing`). Where the platform
    or file system cannot allocate ahead (macOS, some network file systems) the file stays sparse."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    del arr
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno in _DISK_FULL_ERRNOS or e.errno == errno.EFBIG:
            raise
    finally:
        os.close(fd)


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
