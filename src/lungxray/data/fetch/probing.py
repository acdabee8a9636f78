"""Probe every image (in worker processes): read the whole file, hash it, take its header facts (size, mode, bit
depth, format, EXIF orientation) and decode it fully to catch truncation, through the guarded open of
:mod:`lungxray.images.decode`. A file that cannot be used gets a ``reason`` for the rejected report instead of crashing
the stage. :class:`ProbeCache` keeps each result by (real path, size, mtime), so a rerun probes only new or changed
files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from lungxray.core.io import KeyValueStore, progress_bar
from lungxray.core.parallel import process_pool, resolve_workers
from lungxray.images.decode import ImageRejected, open_checked

# --------------------------------------------------------------------------------------------------------------------
# probing (run in worker processes)

_MODE_DEPTH = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def _png_bit_depth(head: bytes) -> int | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 25:
        return head[24]
    return None


def probe(path: str, max_pixels: int) -> dict:
    """Read one file fully: checksum, header facts and a full decode (to catch truncation).

    Returns a dict with either the manifest facts or ``reason``/``detail`` for the rejected report (the guarded open
    of :mod:`lungxray.images.decode`, shared with every other stage that decodes images).
    """
    import hashlib

    out: dict = {"path": path}
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return {**out, "reason": "unreadable_file", "detail": f"cannot read: {e}", "bytes": -1}
    out["bytes"] = len(data)
    if data:
        out["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        with open_checked(data, max_pixels) as img:
            w, h = img.size
            mode, fmt = img.mode, img.format or ""
            try:
                orientation = int(img.getexif().get(0x0112, 0) or 0)
            except Exception:
                orientation = 0
            if fmt == "JPEG":
                # DCT-domain downscaling: the whole entropy-coded stream is still read (so truncation is
                # caught) at a fraction of the cost of a full-size decode.
                img.draft(mode, (max(1, w // 8), max(1, h // 8)))
            img.load()
    except ImageRejected as e:
        return {**out, "reason": e.reason, "detail": e.detail}
    depth = _png_bit_depth(data[:32]) or _MODE_DEPTH.get(mode, 8)
    return {**out, "width": w, "height": h, "mode": mode, "bit_depth": int(depth), "format": fmt,
            "orientation": orientation}


def _probe_star(args: tuple[str, int]) -> dict:
    return probe(*args)


def probe_all(paths: list[str], max_pixels: int, workers: int = 0, progress: bool = True) -> Iterator[dict]:
    """:func:`probe` over ``paths`` in worker processes; results in order, as they come (so they can be saved)."""
    workers = resolve_workers(workers)
    jobs = [(p, max_pixels) for p in paths]
    bar = dict(total=len(jobs), desc="probe images", unit="img", disable=not progress, mininterval=1.0)
    if workers == 1 or len(jobs) < 64:
        yield from (probe(*j) for j in progress_bar(jobs, **bar))
        return
    with process_pool(workers) as pool:
        yield from progress_bar(pool.imap(_probe_star, jobs, chunksize=16), **bar)


class ProbeCache:
    """Probe results keyed by (real path, size, mtime), so a rerun only reads new or changed files.

    Each result goes to a :class:`~lungxray.core.io.KeyValueStore` as soon as it is known, so a rerun after an
    interruption (even ``kill -9``) probes only the files that are left.
    """

    COLUMNS = ["key", "path", "bytes", "sha256", "width", "height", "mode", "bit_depth", "format", "orientation",
               "reason", "detail"]
    VERSION = "lungxray probe cache 2"

    def __init__(self, path: Path):
        self.store = KeyValueStore(path, self.VERSION)
        self.rows: dict[str, dict] = {}
        for key, payload in self.store.items().items():
            row = json.loads(payload)
            if isinstance(row, dict) and set(row) == set(self.COLUMNS):
                self.rows[key] = row

    @staticmethod
    def key(path: str) -> str:
        st = os.stat(path)
        return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"

    def get(self, key: str) -> dict | None:
        r = self.rows.get(key)
        if r is None:
            return None
        out = {k: v for k, v in r.items() if v != "" and k != "key"}
        for k in ("bytes", "width", "height", "bit_depth", "orientation"):
            if k in out:
                out[k] = int(out[k])
        return out

    def put(self, key: str, result: dict) -> None:
        self.rows[key] = row = {"key": key, **{k: result.get(k, "") for k in self.COLUMNS[1:]}}
        self.store.put(key, json.dumps(row).encode())

    def close(self) -> None:
        self.store.close()
