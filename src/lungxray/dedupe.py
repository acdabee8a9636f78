"""Find every copy of the same chest X-ray across sources (and within one source).

Copies in merged Kaggle sets are byte-identical, re-encoded, resized (also squashed to another aspect ratio), cropped a
few percent, padded, brightness/contrast/gamma-changed, stored as 16-bit PNG or rotated by a few degrees. A single
perceptual hash cannot separate those from *different* X-rays of look-alike patients (children's chest films hash
alike), so the dedupe works in three steps:

1. **Signature** (once per file content, cached by sha256): decode to 8-bit grey whatever the mode (16-bit, palette,
   alpha, CMYK, EXIF orientation: :mod:`lungxray.imaging`), trim uniform borders (padding, letter-boxing), resize the
   remaining picture to a ``thumb_size`` square (aspect ratio deliberately dropped, so a squashed copy matches) and
   rank-equalise it (brightness, contrast and gamma changes are monotonic, so they vanish). From that thumbnail: a
   64-bit DCT hash and a 16x16 "low-res" vector; plus a second DCT hash of the whole frame, borders kept.
2. **Candidates** (cheap, generous): pairs whose hashes (of either view) are within ``hash_radius`` bits (multi-index
   hashing: exact and sub-quadratic, see :func:`hash_pairs`) plus, up to ``knn_max_images`` images, each image's
   ``knn_k`` most similar low-res vectors with cosine >= ``knn_min_similarity`` (blocked BLAS product). Trimming is a
   yes/no decision per border: a faint band that is 96% uniform in one copy and 98% in another (a copy squashed to
   400x300 without antialiasing) is trimmed in one only, its trimmed hashes then differ by 10-14 bits, and among
   thousands of look-alike films its k-NN neighbours are others. The frame hash does not depend on that decision,
   so such a pair is still compared; the verification's alignment absorbs the band.
3. **Verification** (strict): the two thumbnails are aligned by an affine Lucas-Kanade fit (shift, scale, aspect,
   small rotation: undoes crops and rotations) and compared by normalised cross-correlation of their *high-pass*
   detail (ribs, vessels, noise texture). Two different patients' films share the low frequencies, not the detail.
   A pair is a duplicate if that score >= ``verify_threshold`` on >= ``verify_min_overlap`` of the thumbnail.
   Before that, a cheap pre-filter at low resolution (high-pass NCC at 1/2 resolution after the coarse 1/4- and
   1/2-resolution fits, ``verify_prefilter_coarse`` / ``verify_prefilter``) drops the many look-alike candidates.

Byte-identical files (same sha256) are always duplicates. Groups are the connected components of all accepted pairs.

Output rules (see :func:`find_groups`):

* ``group``: ``"g" + first 12 hex digits of the smallest sha256 in the group`` - deterministic, independent of row
  order, worker count and params other than what decides membership.
* ``kept``: the image of the group that enters the split (the label-conflict contract of :mod:`lungxray.schema`):
  among the readable members carrying the group's ``resolved_label``, the highest resolution (width*height), then the
  position of its source in ``source_preference`` (unlisted sources after listed ones), then the smallest ``id``.
* label conflicts (a group with more than one label), ``conflict_policy``: ``drop`` (default) keeps no member of the
  group; ``majority`` keeps one member carrying the majority label, which becomes the group's ``resolved_label`` (a
  tie is dropped); ``fail`` raises :class:`~lungxray.errors.LungxrayError` listing the label, source and file of every
  member. Every conflict is listed in the report, with its action and kept member.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy.fft import dctn
from scipy.ndimage import gaussian_filter

from .errors import LungxrayError
from .graph import components
from .imaging import DEFAULT_MAX_PIXELS, ImageRejected, is_image_path, open_grey, too_many_pixels
from .io import KeyValueStore, progress_bar
from .schema import CONFLICT_POLICIES, conflict_outcome, kept_per_group

log = logging.getLogger(__name__)

SIGNATURE_VERSION = 1
METHOD_SHA = "sha256"
METHOD_VISUAL = "phash+ncc"


class DedupeParams(BaseModel):
    """Every tunable of the dedupe (the ``dedupe:`` section of params.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # signature
    thumb_size: int = Field(64, ge=32, le=128, description="side of the equalised square thumbnail (multiple of 16)")
    work_size: int = Field(256, ge=64, description="images are decoded/reduced to about this short side before trimming")
    trim_tolerance: int = Field(10, ge=0, le=64, description="grey levels a border row/column may differ from its edge value")
    trim_min_fraction: float = Field(0.97, gt=0.5, le=1.0, description="share of a row/column that must be border-coloured")
    trim_max_fraction: float = Field(0.3, ge=0.0, lt=0.5, description="at most this share of each side is trimmed")
    # candidates
    hash_radius: int = Field(8, ge=0, le=24, description="candidate if the 64-bit DCT hashes differ by <= this many bits")
    mih_chunks: int = Field(0, ge=0, le=16, description="multi-index hashing chunks (0 = about 64/log2(n))")
    knn_k: int = Field(16, ge=0, description="also candidates: each image's k most similar 16x16 vectors (0 = off)")
    knn_min_similarity: float = Field(0.80, ge=-1.0, le=1.0, description="cosine floor for the k-NN candidates")
    knn_max_images: int = Field(200_000, ge=0, description="above this many distinct images only hashes give candidates")
    # verification
    verify_threshold: float = Field(0.82, gt=0.0, le=1.0, description="high-pass NCC after alignment to accept a pair")
    verify_min_low: float = Field(0.85, ge=-1.0, le=1.0, description="low-pass NCC after alignment must also reach this")
    verify_reject_below: float = Field(0.65, description="after the coarse alignment, pairs below this are rejected")
    verify_prefilter: float = Field(0.6, ge=-1.0, le=1.0, description="half-resolution high-pass NCC after the "
                                    "coarse alignment below which a pair is rejected early (-1 = off)")
    verify_prefilter_coarse: float = Field(0.55, ge=-1.0, le=1.0, description="the same after the 1/4-resolution "
                                           "alignment (before the 1/2-resolution one)")
    verify_min_overlap: float = Field(0.6, gt=0.0, le=1.0, description="share of the thumbnail both images must cover")
    verify_batch: int = Field(256, ge=1, description="pairs verified per vectorised batch")
    # policy / output
    source_preference: list[str] = Field(default_factory=list, description="kept-member tie break, most preferred first")
    conflict_policy: Literal[CONFLICT_POLICIES] = Field(  # type: ignore[valid-type]
        "drop", description="copies of one X-ray under different labels: drop them all, keep one with the majority "
        "label, or fail (the contract: lungxray.schema)")
    workers: int = Field(0, ge=0, description="processes (0 = all cores)")

    def signature_fingerprint(self) -> str:
        keys = ("thumb_size", "work_size", "trim_tolerance", "trim_min_fraction", "trim_max_fraction")
        return json.dumps({"v": SIGNATURE_VERSION, **{k: getattr(self, k) for k in keys}}, sort_keys=True)


# ----------------------------------------------------------------------------------------------------------------------
# signatures


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
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


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
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(workers) as pool:
        yield from progress_bar(pool.imap(func, items, chunksize=chunksize), total=len(items), desc=desc,
                                disable=not progress, unit="img")


def _resolve_workers(workers: int) -> int:
    return workers if workers and workers > 0 else (os.cpu_count() or 1)


class SignatureCache:
    """Signatures by sha256 in a :class:`~lungxray.io.KeyValueStore`: each one is saved as soon as its file is
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
    workers = _resolve_workers(workers or params.workers)
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


# ----------------------------------------------------------------------------------------------------------------------
# candidate search


def popcount64(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.asarray(x, dtype=np.uint64))


def _n_masks(bits: int, rc: int) -> int:
    from math import comb

    return sum(comb(bits, r) for r in range(rc + 1))


def _mih_chunks(n: int, radius: int) -> int:
    """Number of chunks minimising the estimated probe + candidate work (tables of at most 2^24 entries)."""
    best, best_cost = 3, float("inf")
    for m in range(3, 17):
        bounds = np.linspace(0, 64, m + 1).round().astype(int)
        rc = radius // m
        cost = 0.0
        for c in range(m):
            bits = int(bounds[c + 1] - bounds[c])
            # table build + (exact probe by all items) + (each other mask probed by the half with its top bit clear),
            # each probe costing about 1 + expected bucket size
            cost += 2.0 ** bits * 0.05 + n * 3 + n * (1 + n / 2 ** bits) * (1 + (_n_masks(bits, rc) - 1) / 2)
        if cost < best_cost:
            best, best_cost = m, cost
    return best


def hash_pairs(hashes: np.ndarray, radius: int, chunks: int = 0, max_batch: int = 4_000_000,
               workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with ``popcount(h[i] ^ h[j]) <= radius``: exact, via multi-index hashing.

    The 64 bits are cut into ``m`` chunks; by pigeonhole two hashes within ``radius`` differ in some chunk by at most
    ``radius // m`` bits. Each chunk is indexed by a dense table (chunk value -> run in the order sorted by that chunk)
    and probed with every XOR mask of at most that weight. A pair whose chunks differ by a non-zero mask is probed
    from one side only: the item whose chunk has the mask's top bit clear (halves the work, no duplicates within a
    chunk). The few candidates found are checked on all 64 bits (vectorised popcount). ``m`` is chosen to minimise
    the estimated work (about 64/log2(n) bits per chunk): roughly linear in n for spread-out hashes instead of n^2.
    ``workers`` > 1 probes chunks/masks in threads (numpy releases the GIL in the gathers). Returns
    ``(pairs int64[k,2], distances int64[k])`` sorted by pair.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(h)
    if n < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    m = chunks or _mih_chunks(n, radius)
    m = max(m, int(np.ceil(64 / 24)))  # dense tables of at most 2^24 entries
    bounds = np.linspace(0, 64, m + 1).round().astype(int)
    rc = radius // m
    idx_dtype = np.int32 if n < 2**31 else np.int64
    found: list[np.ndarray] = []

    def expand(src: np.ndarray, hsrc: np.ndarray, q: np.ndarray, starts: np.ndarray, order: np.ndarray,
               hs: np.ndarray, exact: bool) -> None:
        st = starts[q]
        cnt = starts[q + 1] - st
        nz = np.flatnonzero(cnt)
        if len(nz) == 0:
            return
        src, hsrc, st, cnt = src[nz], hsrc[nz], st[nz], cnt[nz]
        csum = np.cumsum(cnt, dtype=np.int64)
        cut = 0
        while cut < len(src):  # slices of at most ~max_batch candidates
            base = int(csum[cut - 1]) if cut else 0
            end = max(int(np.searchsorted(csum, base + max_batch, side="right")), cut + 1)
            sl = slice(cut, min(end, len(src)))
            c_sl = cnt[sl]
            tot = int(csum[sl.stop - 1]) - base
            pos = np.repeat(st[sl].astype(np.int64) - (csum[sl] - c_sl - base), c_sl) + np.arange(tot, dtype=np.int64)
            d = np.bitwise_count(np.repeat(hsrc[sl], c_sl) ^ hs[pos])
            ok = np.flatnonzero(d <= radius)
            if len(ok):
                ii = np.repeat(src[sl], c_sl)[ok].astype(np.int64)
                jj = order[pos[ok]].astype(np.int64)
                if exact:
                    keep = ii < jj
                    ii, jj = ii[keep], jj[keep]
                a, b = np.minimum(ii, jj), np.maximum(ii, jj)
                found.append(a * n + b)
            cut = sl.stop

    tables = []
    for c in range(m):
        lo, hi = int(bounds[c]), int(bounds[c + 1])
        bits = hi - lo
        vals = ((h >> np.uint64(64 - hi)) & np.uint64((1 << bits) - 1)).astype(np.int32)
        order = np.argsort(vals, kind="stable").astype(idx_dtype)
        starts = np.zeros((1 << bits) + 1, idx_dtype)
        np.cumsum(np.bincount(vals, minlength=1 << bits), out=starts[1:])
        tables.append((bits, vals, order, starts, h[order]))

    def run(task: tuple[int, int]) -> None:
        c, top = task
        bits, vals, order, starts, hs = tables[c]
        if top < 0:  # exact match of the chunk
            expand(np.arange(n, dtype=idx_dtype), h, vals, starts, order, hs, True)
            return
        sub = np.flatnonzero(((vals >> top) & 1) == 0).astype(idx_dtype)
        vsub, hsub = vals[sub], h[sub]
        for r in range(rc):
            for combo in itertools.combinations(range(top), r):
                mask = (1 << top) | sum(1 << b for b in combo)
                expand(sub, hsub, vsub ^ np.int32(mask), starts, order, hs, False)

    # biggest tasks first (a mask's top bit decides how many masks share it)
    tasks = [(c, -1) for c in range(m)] + [(c, t) for c in range(m) for t in range(tables[c][0]) if rc]
    tasks.sort(key=lambda ct: -(_n_masks(ct[1], rc - 1) if ct[1] >= 0 else 1))
    if workers > 1 and len(tasks) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(run, tasks))
    else:
        for t in tasks:
            run(t)
    if not found:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    codes = np.unique(np.concatenate(found))
    pairs = np.stack([codes // n, codes % n], axis=1)
    return pairs, np.bitwise_count(h[pairs[:, 0]] ^ h[pairs[:, 1]]).astype(np.int64)


def lowres_vectors(thumbs: np.ndarray, side: int = 16) -> np.ndarray:
    """Zero-mean unit-norm ``side x side`` block means of the thumbnails (float32 [n, side*side])."""
    n, T, _ = thumbs.shape
    f = thumbs.astype(np.float32).reshape(n, side, T // side, side, T // side).mean(axis=(2, 4)).reshape(n, -1)
    f -= f.mean(axis=1, keepdims=True)
    f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-6
    return f


def knn_pairs(vectors: np.ndarray, k: int, min_similarity: float, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` most similar other rows (cosine >= ``min_similarity``) as unique pairs ``i < j``."""
    n = len(vectors)
    if n < 2 or k <= 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    k = min(k, n - 1)
    codes, sims = [], []
    for s in range(0, n, block):
        S = vectors[s:s + block] @ vectors.T
        rows = np.arange(s, min(s + block, n))
        S[rows - s, rows] = -np.inf
        idx = np.argpartition(-S, k - 1, axis=1)[:, :k] if k < n else np.argsort(-S, axis=1)
        val = np.take_along_axis(S, idx, axis=1)
        ii = np.repeat(rows, idx.shape[1])
        jj, vv = idx.ravel(), val.ravel()
        ok = vv >= min_similarity
        a, b = np.minimum(ii[ok], jj[ok]), np.maximum(ii[ok], jj[ok])
        codes.append(a.astype(np.int64) * n + b)
        sims.append(vv[ok])
    c = np.concatenate(codes)
    v = np.concatenate(sims)
    c, first = np.unique(c, return_index=True)
    return np.stack([c // n, c % n], axis=1), v[first]


# ----------------------------------------------------------------------------------------------------------------------
# verification


def _sample(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear sample of ``img`` [P,H,W] or [P,C,H,W] at float coords ``xs``, ``ys`` [P,N] -> [P,N] or [P,C,N];
    also the in-bounds mask [P,N]."""
    squeeze = img.ndim == 3
    if squeeze:
        img = img[:, None]
    P, C, H, W = img.shape
    valid = (xs >= 0) & (xs <= W - 1) & (ys >= 0) & (ys <= H - 1)
    xc = np.clip(xs, 0, W - 1.001)
    yc = np.clip(ys, 0, H - 1.001)
    x0 = xc.astype(np.intp)
    y0 = yc.astype(np.intp)
    fx = (xc - x0)[:, None]
    fy = (yc - y0)[:, None]
    base = (np.arange(P * C, dtype=np.intp) * (H * W)).reshape(P, C, 1)
    i00 = (y0 * W + x0)[:, None] + base
    flat = img.reshape(-1)
    v00 = flat[i00]
    v01 = flat[i00 + 1]
    v10 = flat[i00 + W]
    v11 = flat[i00 + W + 1]
    top = v00 + (v01 - v00) * fx
    bot = v10 + (v11 - v10) * fx
    out = top + (bot - top) * fy
    return (out[:, 0] if squeeze else out), valid


def _masked_ncc(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
    n = m.sum(1, keepdims=True) + 1e-6
    a = a - (a * m).sum(1, keepdims=True) / n
    b = b - (b * m).sum(1, keepdims=True) / n
    return (a * b * m).sum(1) / np.sqrt((a * a * m).sum(1) * (b * b * m).sum(1) + 1e-9)


def _warp_coords(p: np.ndarray, X: np.ndarray, Y: np.ndarray, cx: float, cy: float):
    xs = (1 + p[:, 0:1]) * X + p[:, 1:2] * Y + p[:, 2:3] + cx
    ys = p[:, 3:4] * X + (1 + p[:, 4:5]) * Y + p[:, 5:6] + cy
    return xs, ys


def _take_better(s0, l0, o0, idx, s1, l1, o1) -> None:
    better = s1 > s0[idx]
    s0[idx[better]], l0[idx[better]], o0[idx[better]] = s1[better], l1[better], o1[better]


def _lk_affine(A: np.ndarray, B: np.ndarray, schedule: Sequence[tuple[float, int]], margin: int,
               p0: np.ndarray | None = None) -> np.ndarray:
    """Affine parameters mapping A's pixel grid into B (batched Gauss-Newton with gain/offset normalisation)."""
    P, H, W = A.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    X = (xx - cx).ravel()[None]
    Y = (yy - cy).ravel()[None]
    inner = np.zeros((H, W), bool)
    inner[margin:H - margin, margin:W - margin] = True
    inner = inner.ravel()[None]
    p = np.zeros((P, 6), np.float32) if p0 is None else p0.astype(np.float32).copy()
    eye = np.eye(6, dtype=np.float32) * 1e-2
    for sigma, iters in schedule:
        As = gaussian_filter(A, (0, sigma, sigma)).reshape(P, -1)
        Bs = gaussian_filter(B, (0, sigma, sigma))
        gy, gx = np.gradient(Bs, axis=(1, 2))
        stack = np.ascontiguousarray(np.stack([Bs, gx, gy], axis=1))
        for _ in range(iters):
            xs, ys = _warp_coords(p, X, Y, cx, cy)
            smp, valid = _sample(stack, xs, ys)
            bw, gxs, gys = smp[:, 0], smp[:, 1], smp[:, 2]
            m = (valid & inner).astype(np.float32)
            n = m.sum(1, keepdims=True) + 1e-6
            ma = (As * m).sum(1, keepdims=True) / n
            mb = (bw * m).sum(1, keepdims=True) / n
            sa = np.sqrt(((As - ma) ** 2 * m).sum(1, keepdims=True) / n) + 1e-3
            sb = np.sqrt(((bw - mb) ** 2 * m).sum(1, keepdims=True) / n) + 1e-3
            g = sa / sb
            e = ((bw - mb) * g - (As - ma)) * m
            gxs *= g * m
            gys *= g * m
            J = np.stack([gxs * X, gxs * Y, gxs, gys * X, gys * Y, gys], axis=1)  # P,6,N
            Hm = np.matmul(J, J.transpose(0, 2, 1)) + eye
            b = np.matmul(J, e[..., None])
            p = p - np.linalg.solve(Hm, b)[..., 0]
            p[:, [0, 1, 3, 4]] = np.clip(p[:, [0, 1, 3, 4]], -0.3, 0.3)
            p[:, [2, 5]] = np.clip(p[:, [2, 5]], -W * 0.25, W * 0.25)
    return p


def _scorer(A: np.ndarray, B: np.ndarray, margin: int):
    """``score_at(idx, p)`` -> (high-pass NCC, low-pass NCC, overlap) of ``A[idx]`` against ``B[idx]`` warped by the
    affine ``p`` (float32 thumbnails [P,H,W]; blur and high-pass scales follow H, as at H=64)."""
    P, H, W = A.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    X = (xx - cx).ravel()[None]
    Y = (yy - cy).ravel()[None]
    inner = np.zeros((H, W), bool)
    inner[margin:H - margin, margin:W - margin] = True
    inner = inner.ravel()[None]
    n_inner = inner.sum()
    hp_sigma = 1.5 * H / 64
    lp_sigma = 0.6 * H / 64
    Al = gaussian_filter(A, (0, lp_sigma, lp_sigma))
    Bl = gaussian_filter(B, (0, lp_sigma, lp_sigma))
    Ah = (Al - gaussian_filter(Al, (0, hp_sigma, hp_sigma))).reshape(P, -1)
    Bh = Bl - gaussian_filter(Bl, (0, hp_sigma, hp_sigma))
    Alf = Al.reshape(P, -1)
    BlBh = np.ascontiguousarray(np.stack([Bl, Bh], axis=1))

    def score_at(idx: np.ndarray, p: np.ndarray):
        xs, ys = _warp_coords(p, X, Y, cx, cy)
        smp, valid = _sample(BlBh[idx], xs, ys)
        bw, bh = smp[:, 0], smp[:, 1]
        m = (valid & inner).astype(np.float32)
        return _masked_ncc(Ah[idx], bh, m), _masked_ncc(Alf[idx], bw, m), m.sum(1) / n_inner

    return score_at


_PREFILTER_HOOK = None  # tests/benchmarks may set a callable(pre_scores) to inspect the pre-filter


def verify_pairs(A: np.ndarray, B: np.ndarray, params: DedupeParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarity of thumbnail pairs ``A[i]`` / ``B[i]`` (uint8 [P,T,T]).

    Returns ``(score, low, overlap)``: high-pass NCC after the best of {identity, affine alignment}, the low-pass NCC
    and the share of the thumbnail covered by both at that alignment.

    Cheap pre-filter first: a coarse affine fit (1/4 then 1/2 resolution) and the high-pass NCC at 1/2 resolution at
    {identity, that fit}; pairs whose best is below ``verify_prefilter`` are rejected there (their returned scores are
    the half-resolution ones, all below ``verify_threshold``). Only the survivors (a small share of the candidates
    of look-alike films) are scored at full resolution and, if neither clearly in nor clearly out, refined.
    """
    P, H, W = A.shape
    if P == 0:
        z = np.zeros(0, np.float32)
        return z, z, z
    A = A.astype(np.float32)
    B = B.astype(np.float32)
    margin = max(2, H // 20)
    sc = H / 64
    # coarse: affine fit at 1/4 then 1/2 resolution
    Ad = A.reshape(-1, H // 2, 2, W // 2, 2).mean(axis=(2, 4))
    Bd = B.reshape(-1, H // 2, 2, W // 2, 2).mean(axis=(2, 4))
    Aq = Ad.reshape(-1, H // 4, 2, W // 4, 2).mean(axis=(2, 4))
    Bq = Bd.reshape(-1, H // 4, 2, W // 4, 2).mean(axis=(2, 4))
    p = _lk_affine(Aq, Bq, ((0.7 * sc, 8),), 1)
    p[:, [2, 5]] *= 2.0
    all_idx = np.arange(P)
    if params.verify_prefilter > -1.0:
        half = _scorer(Ad, Bd, max(1, margin // 2))
        s0, l0, o0 = half(all_idx, np.zeros((P, 6), np.float32))
        _take_better(s0, l0, o0, all_idx, *half(all_idx, p))
        if _PREFILTER_HOOK is not None:
            _PREFILTER_HOOK("quarter", s0)
        # stage 1: after the 1/4-resolution fit, drop the clearly different pairs before the 1/2-resolution fit
        go = np.flatnonzero(s0 >= params.verify_prefilter_coarse)
        if len(go):
            p[go] = _lk_affine(Ad[go], Bd[go], ((0.5 * sc, 4),), max(1, margin // 2), p0=p[go])
            _take_better(s0, l0, o0, go, *half(go, p[go]))
        if _PREFILTER_HOOK is not None:
            _PREFILTER_HOOK("half", s0)
        s0 = np.minimum(s0, np.float32(np.nextafter(params.verify_threshold, -1.0)))
        keep = go[s0[go] >= params.verify_prefilter]
    else:
        p = _lk_affine(Ad, Bd, ((0.5 * sc, 4),), max(1, margin // 2), p0=p)
        s0 = np.full(P, -1.0, np.float32)
        l0, o0 = s0.copy(), np.zeros(P, np.float32)
        keep = all_idx
    p[:, [2, 5]] *= 2.0
    if len(keep) == 0:
        return s0, l0, o0
    # full resolution: identity, the coarse fit, and a refinement of the pairs neither clearly in nor clearly out
    full = _scorer(A, B, margin)
    k0, kl0, ko0 = full(keep, np.zeros((len(keep), 6), np.float32))
    s0[keep], l0[keep], o0[keep] = k0, kl0, ko0
    todo = keep[~((k0 >= params.verify_threshold) & (kl0 >= params.verify_min_low))]
    if len(todo):
        pt = p[todo]
        s1, l1, o1 = full(todo, pt)
        _take_better(s0, l0, o0, todo, s1, l1, o1)
        mid = (s1 < params.verify_threshold) & (s1 >= params.verify_reject_below)
        if mid.any():
            sub = todo[mid]
            p2 = _lk_affine(A[sub], B[sub], ((1.0 * sc, 4), (0.5 * sc, 3)), margin, p0=pt[mid])
            s2, l2, o2 = full(sub, p2)
            _take_better(s0, l0, o0, sub, s2, l2, o2)
    return s0, l0, o0


_VERIFY_THUMBS: np.ndarray | None = None
_VERIFY_PARAMS: DedupeParams | None = None


def _verify_init(thumbs: np.ndarray, params: DedupeParams) -> None:
    global _VERIFY_THUMBS, _VERIFY_PARAMS
    _VERIFY_THUMBS, _VERIFY_PARAMS = thumbs, params


def _verify_chunk(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    assert _VERIFY_THUMBS is not None and _VERIFY_PARAMS is not None
    return verify_pairs(_VERIFY_THUMBS[pairs[:, 0]], _VERIFY_THUMBS[pairs[:, 1]], _VERIFY_PARAMS)


def verify_all(thumbs: np.ndarray, pairs: np.ndarray, params: DedupeParams, workers: int = 1,
               progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`verify_pairs` over index pairs into ``thumbs``, in batches, in parallel."""
    if len(pairs) == 0:
        z = np.zeros(0, np.float32)
        return z, z, z
    chunks = [pairs[i:i + params.verify_batch] for i in range(0, len(pairs), params.verify_batch)]
    workers = min(workers, len(chunks))
    if workers <= 1:
        _verify_init(thumbs, params)
        out = [_verify_chunk(c) for c in progress_bar(chunks, desc="dedupe verify", disable=not progress, unit="batch")]
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers, initializer=_verify_init, initargs=(thumbs, params)) as pool:
            out = list(progress_bar(pool.imap(_verify_chunk, chunks), total=len(chunks), desc="dedupe verify",
                                    disable=not progress, unit="batch"))
    return tuple(np.concatenate([o[k] for o in out]) for k in range(3))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------------
# grouping


def candidate_pairs(sig: Signatures, idx: np.ndarray, params: DedupeParams) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (as indices into ``idx``) and their hash distance (the smaller of the two views')."""
    workers = _resolve_workers(params.workers)
    parts = [hash_pairs(h[idx], params.hash_radius, params.mih_chunks, workers=workers)[0]
             for h in (sig.hashes, sig.frame_hashes)]
    if params.knn_k > 0 and len(idx) <= params.knn_max_images:
        kp, _ = knn_pairs(lowres_vectors(sig.thumbs[idx]), params.knn_k, params.knn_min_similarity)
        parts.append(kp)
    elif params.knn_k > 0:
        log.warning("%d distinct images > knn_max_images=%d: candidates from hashes only", len(idx),
                    params.knn_max_images)
    n = len(idx)
    codes = np.unique(np.concatenate([p[:, 0] * n + p[:, 1] for p in parts]))
    pairs = np.stack([codes // n, codes % n], axis=1)
    d = np.minimum(*(popcount64(h[idx][pairs[:, 0]] ^ h[idx][pairs[:, 1]]) for h in (sig.hashes, sig.frame_hashes)))
    return pairs, d.astype(np.int64)


def _source_rank(source: str, preference: list[str]) -> int:
    return preference.index(source) if source in preference else len(preference)


def _label_text(labels: pd.Series) -> pd.Series:
    """Labels as text, "" where there is none."""
    return labels.astype("string").fillna("").str.strip().astype(object)


def _resolve_labels(out: pd.DataFrame, policy: str) -> list[dict]:
    """Set ``label_conflict``, ``conflict_action`` and ``resolved_label`` of every row (schema.conflict_outcome);
    return one report entry per label conflict."""
    labels = _label_text(out["label"])
    n_labels = labels.where(labels != "").groupby(out["group"]).transform("nunique")
    out["label_conflict"] = (n_labels > 1).to_numpy()
    first = labels.where(labels != "").groupby(out["group"]).transform("first")
    out["conflict_action"] = ""
    out["resolved_label"] = first.fillna("").astype(object)
    conflicts = []
    for gid, g in out[out["label_conflict"]].groupby("group", sort=True):
        action, resolved = conflict_outcome(labels[g.index], policy)
        out.loc[g.index, "conflict_action"] = action
        out.loc[g.index, "resolved_label"] = resolved
        counts = labels[g.index].value_counts()
        members = [{"id": str(r.id), "source": str(r.source), "label": str(r.label), "path": str(r.path),
                    "width": int(r.width), "height": int(r.height)}
                   for r in g.sort_values(["_id"]).itertuples()]
        conflicts.append({"group": gid, "labels": {str(k): int(v) for k, v in counts.items()}, "action": action,
                          "resolved_label": resolved, "members": members})
    return conflicts


def _choose_kept(out: pd.DataFrame, preference: list[str]) -> np.ndarray:
    """The image of each group that enters the split: among its readable members carrying the resolved label, the
    highest resolution, then ``preference``'s source order, then the smallest id; none in a dropped group."""
    cand = out[(_label_text(out["label"]) == out["resolved_label"]) & out["readable"].astype(bool)
               & (out["conflict_action"].map(kept_per_group) == 1)]
    resolution = cand["width"].astype("int64") * cand["height"].astype("int64")
    order = pd.DataFrame({"group": cand["group"], "res": -resolution, "id": cand["_id"],
                          "srank": [_source_rank(str(x), preference) for x in cand["source"]]})
    best = order.sort_values(["group", "res", "srank", "id"], kind="mergesort").drop_duplicates("group").index
    return out.index.isin(best)


def _conflict_message(conflicts: list[dict], limit: int = 50) -> str:
    lines = [f"{len(conflicts)} duplicate group(s) carry different labels (dedupe.conflict_policy: fail):"]
    for c in conflicts[:limit]:
        lines.append(f"  group {c['group']} ({', '.join(f'{k} {v}' for k, v in c['labels'].items())}):")
        lines += [f"    {m['label']} from {m['source']}: {m['path']}" for m in c["members"]]
    if len(conflicts) > limit:
        lines.append(f"  ... {len(conflicts) - limit} more")
    lines.append("Correct the labels at their source, or set dedupe.conflict_policy to 'drop' (no member of such a "
                 "group is used) or 'majority' (one member with the majority label is used; ties are dropped).")
    return "\n".join(lines)


def find_groups(df: pd.DataFrame, params: DedupeParams | None = None, cache_path: str | None = None,
                workers: int = 0, progress: bool = True, signatures: Signatures | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[pd.DataFrame, dict]:
    """Group every copy of the same X-ray. See the module docstring for the rules; returns ``(groups_df, report)``.

    ``df`` needs ``id, source, path, label``; ``width, height, sha256`` are used when present (else measured).
    Output columns: the input ones plus ``group, kept, match_method, matched_to, hash_distance, similarity,
    group_size, n_sources, readable, label_conflict, conflict_action, resolved_label`` (see the module docstring).
    """
    params = params or DedupeParams()
    t0 = time.time()
    for col in ("id", "source", "path", "label"):
        if col not in df.columns:
            raise LungxrayError(f"dedupe input lacks the column {col!r} (has: {', '.join(map(str, df.columns))})")
    out = df.reset_index(drop=True).copy()
    n = len(out)
    if out["id"].duplicated().any():
        dup = out.loc[out["id"].duplicated(), "id"].head(5).tolist()
        raise LungxrayError(f"dedupe input has duplicate ids, e.g. {dup}")
    workers = _resolve_workers(workers or params.workers)
    sha_in = out["sha256"].tolist() if "sha256" in out.columns else None
    sig = signatures or compute_signatures(out["path"].astype(str).tolist(), workers=workers, cache_path=cache_path,
                                           sha256s=sha_in, progress=progress, params=params, max_pixels=max_pixels)
    shas = np.array(sig.sha256, dtype=object)
    out["sha256"] = shas
    for col, arr in (("width", sig.width), ("height", sig.height)):
        if col not in out.columns:
            out[col] = arr
        else:
            v = pd.to_numeric(out[col], errors="coerce")
            out[col] = v.where(v.notna() & (v > 0), pd.Series(arr)).astype("int64")
    out["readable"] = sig.ok
    t_sig = time.time() - t0

    edges: list[tuple[int, int]] = []
    # 1. byte-identical
    first_by_sha: dict[str, int] = {}
    edge_method = [""] * n
    edge_partner = [-1] * n
    edge_dist = np.full(n, np.nan)
    edge_sim = np.full(n, np.nan)
    for i, s in enumerate(shas):
        if not s:
            continue
        j = first_by_sha.setdefault(s, i)
        if j != i:
            edges.append((i, j))
            for a, b in ((i, j), (j, i)):
                edge_method[a], edge_partner[a], edge_dist[a], edge_sim[a] = METHOD_SHA, b, 0.0, 1.0
    # 2. visual, over one readable row per distinct content
    reps = np.array(sorted(i for s, i in first_by_sha.items() if sig.ok[i]), dtype=np.int64)
    t1 = time.time()
    pairs, hdist = candidate_pairs(sig, reps, params) if len(reps) > 1 else (np.zeros((0, 2), np.int64),
                                                                                  np.zeros(0, np.int64))
    t_cand = time.time() - t1
    t1 = time.time()
    score, low, overlap = verify_all(sig.thumbs, reps[pairs] if len(pairs) else pairs, params, workers, progress)
    t_ver = time.time() - t1
    accepted = (score >= params.verify_threshold) & (low >= params.verify_min_low) & \
        (overlap >= params.verify_min_overlap)
    # members of one sha share the visual edge
    members_of: dict[int, list[int]] = {}
    for i, s in enumerate(shas):
        if s:
            members_of.setdefault(first_by_sha[s], []).append(i)
    for (a, b), d, sc in zip(reps[pairs[accepted]] if len(pairs) else [], hdist[accepted], score[accepted]):
        edges.append((int(a), int(b)))
        for x, y in ((a, b), (b, a)):
            for m in members_of[int(x)]:
                if edge_method[m] == METHOD_SHA:
                    continue
                if np.isnan(edge_sim[m]) or sc > edge_sim[m]:
                    edge_method[m], edge_partner[m], edge_dist[m], edge_sim[m] = METHOD_VISUAL, int(y), d, sc

    roots = components(n, edges)
    out["_root"] = roots
    out["match_method"] = edge_method
    out["matched_to"] = [out.at[p, "id"] if p >= 0 else "" for p in edge_partner]
    out["hash_distance"] = edge_dist
    out["similarity"] = edge_sim

    # group ids, conflicts, kept (the label-conflict contract: lungxray.schema)
    out["_id"] = out["id"].astype(str)
    group_id = {}
    for r, g in out.groupby("_root", sort=False):
        s = sorted(x for x in g["sha256"] if x)
        group_id[r] = "g" + (s[0][:12] if s else hashlib.sha256(str(sorted(g["_id"]))[:].encode()).hexdigest()[:12])
    out["group"] = out["_root"].map(group_id)
    out["group_size"] = out.groupby("group")["id"].transform("size").astype("int64")
    out["n_sources"] = out.groupby("group")["source"].transform("nunique").astype("int64")
    conflicts = _resolve_labels(out, params.conflict_policy)
    if conflicts and params.conflict_policy == "fail":
        raise LungxrayError(_conflict_message(conflicts))
    out["kept"] = _choose_kept(out, list(params.source_preference))
    for c in conflicts:
        kept = out.loc[(out["group"] == c["group"]) & out["kept"], "id"]
        c["kept"] = str(kept.iloc[0]) if len(kept) else None
    out = out.drop(columns=["_root", "_id"])

    report = _report(out, sig, params, conflicts, {
        "candidate_pairs": int(len(pairs)), "verified_pairs": int(accepted.sum()),
        "seconds": {"signatures": round(t_sig, 2), "candidates": round(t_cand, 2), "verify": round(t_ver, 2),
                    "total": round(time.time() - t0, 2)},
        "signatures_computed": int(sig.n_computed), "signatures_cached": int(sig.n_cached)})
    return out, report


def _report(out: pd.DataFrame, sig: Signatures, params: DedupeParams, conflicts: list, extra: dict) -> dict:
    dup = out[out["group_size"] > 1]
    dropped = out["conflict_action"].map(kept_per_group).eq(0)
    per_source = {}
    for s, g in out.groupby("source", sort=True):
        per_source[str(s)] = {"images": int(len(g)), "kept": int(g["kept"].sum()),
                              "in_duplicate_groups": int((g["group_size"] > 1).sum()),
                              "removed": int((~g["kept"]).sum()),
                              "dropped_for_label_conflicts": int(dropped[g.index].sum())}
    pair_counts: dict[str, dict[str, int]] = {}
    for _, g in dup.groupby("group", sort=True):
        srcs = g["source"].astype(str).tolist()
        seen = set()
        for a, b in itertools.combinations(range(len(srcs)), 2):
            key = "|".join(sorted((srcs[a], srcs[b])))
            e = pair_counts.setdefault(key, {"pairs": 0, "groups": 0})
            e["pairs"] += 1
            if key not in seen:
                e["groups"] += 1
                seen.add(key)
    methods = out.loc[out["match_method"] != "", "match_method"].value_counts()
    unreadable = [{"id": str(r.id), "path": str(r.path), "error": sig.errors[i]}
                  for i, r in enumerate(out.itertuples()) if not sig.ok[i]]
    return {
        "images_in": int(len(out)),
        "groups": int(out["group"].nunique()),
        "duplicate_groups": int(dup["group"].nunique()),
        "images_in_duplicate_groups": int(len(dup)),
        "duplicates_removed": int(len(out) - out["group"].nunique()),
        "largest_group": int(out["group_size"].max()) if len(out) else 0,
        "kept": int(out["kept"].sum()),
        "images_dropped_for_label_conflicts": int(dropped.sum()),
        "match_methods": {str(k): int(v) for k, v in methods.items()},
        "per_source": per_source,
        "per_source_pair": dict(sorted(pair_counts.items())),
        "label_conflicts": conflicts,
        "n_label_conflicts": len(conflicts),
        "unreadable": unreadable,
        **extra,
        "params": json.loads(params.model_dump_json()),
    }


def summary_text(report: dict) -> str:
    """A few human-readable lines about a :func:`find_groups` report."""
    lines = [f"{report['images_in']} images -> {report['groups']} distinct X-rays "
             f"({report['duplicate_groups']} duplicate groups, {report['duplicates_removed']} duplicates removed, "
             f"largest group {report['largest_group']})",
             f"candidates {report.get('candidate_pairs', 0)}, verified {report.get('verified_pairs', 0)}; "
             f"label conflicts: {report['n_label_conflicts']}; unreadable: {len(report['unreadable'])}"]
    for s, c in report["per_source"].items():
        lines.append(f"  {s}: {c['images']} images, {c['in_duplicate_groups']} in duplicate groups, "
                     f"{c['kept']} kept, {c['dropped_for_label_conflicts']} dropped for label conflicts")
    for k, v in report["per_source_pair"].items():
        lines.append(f"  {k}: {v['groups']} groups, {v['pairs']} pairs")
    for c in report["label_conflicts"][:20]:
        outcome = f"kept {c['kept']} as {c['resolved_label']}" if c.get("kept") else "no member kept"
        lines.append(f"  conflict {c['group']} {c['labels']} -> {c['action']}: {outcome}")
    return "\n".join(lines)


def dedupe_folders(folders: list[str], out_csv: str, params: DedupeParams | None = None,
                   cache_path: str | None = None, progress: bool = True,
                   labels: Literal["parent", "none"] = "parent", max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Dedupe image folders (recursively); source = the folder argument's name; label = the image's parent folder
    name (``labels="parent"``; images directly in a given folder have none), or no labels at all (``"none"``: flat
    folders, no label-conflict check). Files that cannot be used (over ``max_pixels``, empty, not an image, ...) are
    listed in the report's ``unreadable`` with the words of fetch's rejected report."""
    from .io import write_csv

    params = params or DedupeParams()
    rows = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise LungxrayError(f"not a folder: {folder}")
        source = root.resolve().name
        for p in sorted(root.rglob("*")):
            if p.is_file() and is_image_path(p):
                rows.append({"id": f"{source}/{p.relative_to(root).as_posix()}", "source": source, "path": str(p),
                             "label": p.parent.name if labels == "parent" and p.parent != root else None})
    if not rows:
        raise LungxrayError(f"no images ({', '.join(sorted({'.png', '.jpg', '.jpeg'}))}, ...) under {folders}")
    df = pd.DataFrame(rows)
    groups, report = find_groups(df, params, cache_path=cache_path, progress=progress, max_pixels=max_pixels)
    write_csv(out_csv, groups)
    return report


# ----------------------------------------------------------------------------------------------------------------------
# contact sheet


def contact_sheet(groups_df: pd.DataFrame, report: dict, out_png: str, max_groups: int = 24,
                  max_members: int = 6, max_conflicts: int = 200, seed: int = 0) -> str:
    """PNG with ``max_groups`` sample duplicate groups (seeded) and every label conflict (up to ``max_conflicts``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outcome = {c["group"]: (f"majority: {c['resolved_label']}" if c.get("kept") else f"{c['action']}: none kept")
               for c in report.get("label_conflicts", [])}
    conflict_ids = list(outcome)[:max_conflicts]
    dup_ids = sorted(set(groups_df.loc[groups_df["group_size"] > 1, "group"]) - set(conflict_ids))
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(dup_ids, size=min(max_groups, len(dup_ids)), replace=False).tolist()) if dup_ids else []
    rows = [(g, True) for g in conflict_ids] + [(g, False) for g in sample]
    n_rows = max(1, len(rows))
    fig, axes = plt.subplots(n_rows, max_members, figsize=(2.2 * max_members, 2.5 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (gid, is_conflict) in enumerate(rows):
        g = groups_df[groups_df["group"] == gid].sort_values(["kept", "id"], ascending=[False, True])
        for c, m in enumerate(g.head(max_members).itertuples()):
            ax = axes[r, c]
            try:
                im, _ = open_grey(str(m.path), draft_size=160)
                im.thumbnail((160, 160))
                ax.imshow(np.asarray(im), cmap="gray", vmin=0, vmax=255)
            except Exception:  # noqa: BLE001
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
            sim = "" if pd.isna(m.similarity) else f" s={m.similarity:.2f}"
            ax.set_title(f"{m.source}\n{m.label} {m.width}x{m.height}{sim}{' *kept' if m.kept else ''}",
                         fontsize=7, color="red" if is_conflict else "black")
        head = f"{gid} CONFLICT\n{outcome[gid]}" if is_conflict else gid
        axes[r, 0].text(-0.05, 0.5, f"{head}\n({len(g)} images)",
                        transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center", fontsize=7,
                        color="red" if is_conflict else "black")
    top = 1 - 0.5 / fig.get_figheight()  # a band of half an inch for the title, whatever the number of rows
    fig.suptitle(f"{len(conflict_ids)} label conflicts (red, with what was done) + {len(sample)} of {len(dup_ids)} "
                 "other duplicate groups", fontsize=10, y=1 - 0.2 / fig.get_figheight())
    fig.tight_layout(rect=(0, 0, 1, top))
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png
