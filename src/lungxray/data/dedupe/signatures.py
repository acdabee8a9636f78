"""Step 1 of the dedupe, the signature of each file content: decode, trim, thumbnail, hashes; cached by sha256."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from scipy.fft import dctn

from lungxray.core.io import KeyValueStore, progress_bar, sha256_file
from lungxray.core.parallel import process_pool, resolve_workers
from lungxray.core.schema import DEFAULT_MAX_PIXELS
from lungxray.data.dedupe.params import DedupeParams
from lungxray.images.decode import ImageRejected, open_grey, too_many_pixels

log = logging.getLogger(__name__)


def trim_box(a: np.ndarray, tol: int = 10, min_frac: float = 0.97, max_frac: float = 0.3) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of ``a`` (2-D uint8) without its uniform borders (of any grey value)."""
    h, w = a.shape
    t, b, l, r = 0, h, 0, w

    def run(lines: np.ndarray) -> int:
        if len(lines) == 0:
            return 0
        v = float(np.median(lines[0]))

        def ok_of(block: np.ndarray) -> np.ndarray:
            return (np.abs(block.astype(np.int16) - v) <= tol).mean(axis=1) >= min_frac

        # the first non-border line is usually the first or one of the next few: test lines in growing blocks
        start, step = 0, 1
        while start < len(lines):
            bad = np.flatnonzero(~ok_of(lines[start:start + step]))
            if len(bad):
                return start + int(bad[0])
            start, step = start + step, step * 8
        return len(lines)

    for _ in range(3):
        sub = a[t:b, l:r]
        hh, ww = sub.shape
        mh, mw = int(hh * max_frac), int(ww * max_frac)
        dt, db = run(sub[:mh]), run(sub[::-1][:mh])
        dl, dr = run(sub[:, :mw].T), run(sub[:, ::-1][:, :mw].T)
        if dt + db + dl + dr == 0:
            break
        t, b, l, r = t + dt, b - db, l + dl, r - dr
        if (b - t) < 8 or (r - l) < 8:
            return 0, h, 0, w
    return t, b, l, r


def equalize(x: np.ndarray) -> np.ndarray:
    """Rank-equalise (ties get their mean rank) to uint8: removes any monotonic intensity change."""
    flat = x.ravel()
    uniq, inv, cnt = np.unique(flat, return_inverse=True, return_counts=True)
    start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    mean_rank = start + (cnt - 1) / 2.0
    out = mean_rank[inv] * (255.0 / max(1, flat.size - 1))
    return np.rint(out).astype(np.uint8).reshape(x.shape)


def dct_hash(x: np.ndarray, hash_size: int = 8) -> int:
    """pHash of a (32x32) array: signs of the low-frequency DCT block against its median, as an unsigned 64-bit int."""
    d = dctn(x.astype(np.float64), norm="ortho")[:hash_size, :hash_size].ravel()
    bits = d > np.median(d)
    return int(np.packbits(bits).view(">u8")[0])


def signature_from_image(grey, params: DedupeParams) -> tuple[int, int, np.ndarray]:
    """``(64-bit hash, 64-bit hash of the untrimmed frame, thumbnail uint8[T,T])`` of an 8-bit greyscale PIL image."""
    from PIL import Image

    T = params.thumb_size
    w, h = grey.size
    f = min(w, h) // params.work_size
    if f >= 2:
        grey = grey.reduce(f)
    a = np.asarray(grey)
    t, b, l, r = trim_box(a, params.trim_tolerance, params.trim_min_fraction, params.trim_max_fraction)
    th = np.asarray(grey.resize((T, T), Image.Resampling.BILINEAR, box=(l, t, r, b)), dtype=np.uint8)
    e = equalize(th)
    x32 = e.astype(np.float32).reshape(32, T // 32, 32, T // 32).mean(axis=(1, 3))
    frame = equalize(np.asarray(grey.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.uint8))
    return dct_hash(x32), dct_hash(frame), e


def _decode_count_hook() -> None:  # replaced in tests to count decodes
    pass


_FAILED = (0, 0, 0, 0, None)


def _signature_of_file(args: tuple[str, str | None, DedupeParams, int]) -> tuple:
    """``(path, sha256, ok, error, width, height, hash, frame hash, thumbnail)`` of one file; never raises."""
    path, sha, params, max_pixels = args
    src: str | bytes = path
    if sha is None:  # else the caller (fetch manifest) knows it: decode straight from the file
        try:
            src = Path(path).read_bytes()
        except OSError as e:
            return (path, sha, False, f"cannot read: {e}", *_FAILED)
        sha = hashlib.sha256(src).hexdigest()
    try:
        _decode_count_hook()
        grey, (w, h) = open_grey(src, draft_size=params.work_size, max_pixels=max_pixels)
        hsh, frame, thumb = signature_from_image(grey, params)
    except ImageRejected as e:  # the same reasons and words as fetch's rejected.csv
        return (path, sha, False, e.detail, *_FAILED)
    except Exception as e:  # noqa: BLE001 - a file that breaks the signature is reported, never fatal
        return (path, sha, False, f"cannot decode: {type(e).__name__}: {e}", *_FAILED)
    return (path, sha, True, "", w, h, hsh, frame, thumb)


def _sha_of_file(path: str) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


@dataclass
class Signatures:
    """One row per input path (same order)."""

    paths: list[str]
    sha256: list[str]
    ok: np.ndarray  # bool
    errors: list[str]
    width: np.ndarray  # int64, stored (full) size
    height: np.ndarray
    hashes: np.ndarray  # uint64, of the trimmed thumbnail
    frame_hashes: np.ndarray  # uint64, of the whole frame (borders kept)
    thumbs: np.ndarray  # uint8 [n, T, T]
    n_computed: int = 0  # how many files were decoded (the rest came from the cache)
    n_cached: int = 0
    params: DedupeParams = field(default_factory=DedupeParams)

    def __len__(self) -> int:
        return len(self.paths)


def _imap(func, items: list, workers: int, desc: str, progress: bool, chunksize: int = 4) -> Iterator:
    """``func`` over ``items`` in worker processes, results in order as they come (so callers can save them)."""
    if not items:
        return
    workers = min(workers, len(items))
    if workers <= 1:
        yield from (func(x) for x in progress_bar(items, desc=desc, disable=not progress, unit="img"))
        return
    with process_pool(workers) as pool:
        yield from progress_bar(pool.imap(func, items, chunksize=chunksize), total=len(items), desc=desc,
                        disable=not progress, unit="img")


class SignatureCache:
    """Signatures by sha256 in a :class:`~lungxray.core.io.KeyValueStore`: each one is saved as soon as its file is
    decoded, so a rerun after an interruption (even ``kill -9``) decodes only the files that are left. The store's
    version holds the signature fingerprint: a cache made with other signature params (or by an older version) is
    rebuilt."""

    def __init__(self, path: str, params: DedupeParams):
        T = params.thumb_size
        self.dtype = np.dtype([("width", "<i8"), ("height", "<i8"), ("hash", "<u8"), ("frame", "<u8"),
                               ("thumb", "u1", (T, T))])
        self.store = KeyValueStore(path, "lungxray dedupe signatures " + params.signature_fingerprint())
        self.entries: dict[str, tuple] = {}
        for sha, value in self.store.items().items():
            if len(value) == self.dtype.itemsize:
                r = np.frombuffer(value, dtype=self.dtype)[0]
                self.entries[sha] = (int(r["width"]), int(r["height"]), int(r["hash"]), int(r["frame"]), r["thumb"])

    def add(self, sha: str, entry: tuple) -> None:
        rec = np.zeros(1, self.dtype)
        rec[0] = entry
        self.store.put(sha, rec.tobytes())
        self.entries[sha] = entry

    def close(self) -> None:
        self.store.close()


def _cached_entry(entry: tuple, max_pixels: int) -> tuple | str:
    """A cached signature, or the reason it may not be used (the pixel limit holds for cached files too)."""
    w, h = entry[0], entry[1]
    return too_many_pixels(w, h, max_pixels).detail if w * h > max_pixels else entry


def compute_signatures(paths: list[str], workers: int = 0, cache_path: str | None = None,
                       sha256s: list[str] | None = None, progress: bool = True,
                       params: DedupeParams | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Signatures:
    """Decode every image once (in parallel) and return hashes + thumbnails, reusing ``cache_path`` by sha256.

    Unreadable files do not raise: their row has ``ok=False`` and the reason in ``errors`` (the words of fetch's
    rejected report; files over ``max_pixels`` are not decoded).
    """
    params = params or DedupeParams()
    paths = [str(p) for p in paths]
    n, T = len(paths), params.thumb_size
    workers = resolve_workers(workers or params.workers)
    cache = SignatureCache(cache_path, params) if cache_path else None
    known = cache.entries if cache else {}
    shas: list[str | None]
    if sha256s is not None:
        if len(sha256s) != n:
            raise ValueError("sha256s must have one entry per path")
        shas = [s if isinstance(s, str) and len(s) == 64 else None for s in sha256s]
    else:
        shas = [None] * n
    if known and any(s is None for s in shas):  # hash the bytes first, so cached files are not decoded
        missing = [i for i, s in enumerate(shas) if s is None]
        for i, s in zip(missing, _imap(_sha_of_file, [paths[i] for i in missing], workers, "sha256", progress, 16)):
            shas[i] = s
    todo = [i for i in range(n) if shas[i] is None or shas[i] not in known]
    # decode each distinct content once
    first_of: dict[str, int] = {}
    jobs: list[int] = []
    for i in todo:
        s = shas[i]
        if s is not None and s in first_of:
            continue
        if s is not None:
            first_of[s] = i
        jobs.append(i)
    fresh: dict[str, tuple] = {}
    failed: dict[int, str] = {}
    results = _imap(_signature_of_file, [(paths[i], shas[i], params, max_pixels) for i in jobs], workers,
                    "dedupe signatures", progress, chunksize=int(np.clip(len(jobs) // (8 * max(1, workers)), 1, 32)))
    try:
        for i, (_, sha, ok, err, w, h, hsh, frame, thumb) in zip(jobs, results):
            shas[i] = sha
            if ok:
                fresh[sha] = (w, h, hsh, frame, thumb)
                if cache:
                    cache.add(sha, fresh[sha])
            else:
                failed[i] = err
    finally:
        results.close()
        if cache:
            cache.close()
    return _assemble(paths, shas, fresh, known, failed, params, max_pixels, len(jobs))


def _assemble(paths: list[str], shas: list[str | None], fresh: dict[str, tuple], known: dict[str, tuple],
              failed: dict[int, str], params: DedupeParams, max_pixels: int, n_computed: int) -> Signatures:
    n, T = len(paths), params.thumb_size
    ok = np.zeros(n, bool)
    errors = [""] * n
    width = np.zeros(n, np.int64)
    height = np.zeros(n, np.int64)
    hashes = np.zeros(n, np.uint64)
    frames = np.zeros(n, np.uint64)
    thumbs = np.zeros((n, T, T), np.uint8)
    n_cached = 0
    failed_sha = {shas[i]: e for i, e in failed.items() if shas[i] is not None}
    for i in range(n):
        s = shas[i]
        entry = fresh.get(s) if s is not None else None
        if entry is None and s is not None and s in known:
            entry = _cached_entry(known[s], max_pixels)
            if isinstance(entry, str):
                failed[i], entry = entry, None
            else:
                n_cached += 1
        if entry is None:
            errors[i] = failed.get(i) or failed_sha.get(s) or "not decoded"
            if s is None:
                shas[i] = ""
            continue
        ok[i] = True
        width[i], height[i], thumbs[i] = entry[0], entry[1], entry[4]
        hashes[i], frames[i] = np.uint64(entry[2]), np.uint64(entry[3])
    for i, e in failed.items():
        log.warning("unreadable image %s: %s", paths[i], e)
    return Signatures(paths=paths, sha256=[s or "" for s in shas], ok=ok, errors=errors, width=width, height=height,
                      hashes=hashes, frame_hashes=frames, thumbs=thumbs, n_computed=n_computed, n_cached=n_cached,
                      params=params)
