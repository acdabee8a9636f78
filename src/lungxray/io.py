"""Small I/O helpers: atomic writes so that an interrupted stage never leaves a file that looks complete."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd


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


class Journal:
    """An append-only cache file that keeps what an interrupted run (even ``kill -9``) computed.

    Layout: ``header`` (it names the format and whatever the records depend on), then one frame per record: the
    payload's length (4 bytes), the payload, its CRC32 (4 bytes). Each :meth:`append` reaches the operating system at
    once. :meth:`read` returns the payloads up to the first torn or damaged frame (what a killed writer leaves), so a
    partial write is never taken for a record; the next :meth:`append` cuts that tail off first. A file with another
    header (other format or params) reads as empty and is started afresh.
    """

    _U32 = struct.Struct("<I")

    def __init__(self, path: str | os.PathLike, header: bytes):
        self.path = Path(path)
        self.header = header
        self._fh: Any = None
        self._valid_end: int | None = None  # bytes of header + whole records; None: no file of ours
        self._scanned = False

    def read(self) -> list[bytes]:
        self._scanned, self._valid_end = True, None
        try:
            data = self.path.read_bytes()
        except OSError:
            return []
        if not data.startswith(self.header):
            return []
        out, pos, n = [], len(self.header), len(data)
        while pos + 8 <= n:
            (size,) = self._U32.unpack_from(data, pos)
            end = pos + 8 + size
            if end > n or zlib.crc32(data[pos + 4:end - 4]) != self._U32.unpack_from(data, end - 4)[0]:
                break
            out.append(data[pos + 4:end - 4])
            pos = end
        self._valid_end = pos
        return out

    def _frame(self, payload: bytes) -> bytes:
        return self._U32.pack(len(payload)) + payload + self._U32.pack(zlib.crc32(payload))

    def append(self, payload: bytes) -> None:
        if self._fh is None:
            if not self._scanned:
                self.read()
            if self._valid_end is None:  # start afresh, atomically
                with atomic_path(self.path) as tmp:
                    tmp.write_bytes(self.header)
                self._valid_end = len(self.header)
            with open(self.path, "r+b") as fh:
                fh.truncate(self._valid_end)  # a torn tail left by a killed run
            self._fh = open(self.path, "ab", buffering=0)
        self._fh.write(self._frame(payload))

    def rewrite(self, payloads: Iterable[bytes]) -> None:
        """Replace the file by exactly these records, atomically (compaction)."""
        self.close()
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(self.header)
                for p in payloads:
                    fh.write(self._frame(p))
        self._scanned = False

    def close(self) -> None:
        if self._fh is not None:
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
