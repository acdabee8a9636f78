"""Step 2 of the dedupe, the candidate pairs (cheap, generous): multi-index hash search and k-NN of low-res vectors."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np

from lungxray.core.parallel import resolve_workers
from lungxray.data.dedupe.params import DedupeParams
from lungxray.data.dedupe.signatures import Signatures

log = logging.getLogger(__name__)


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
    idx_dtype = np.int32 if n < 2**31 else np.int64
    probe = _Probe(h, radius, radius // m, max_batch, idx_dtype, _chunk_tables(h, m, idx_dtype))
    tasks = probe.tasks()
    if workers > 1 and len(tasks) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(probe.run, tasks))
    else:
        for t in tasks:
            probe.run(t)
    if not probe.found:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    codes = np.unique(np.concatenate(probe.found))
    pairs = np.stack([codes // n, codes % n], axis=1)
    return pairs, np.bitwise_count(h[pairs[:, 0]] ^ h[pairs[:, 1]]).astype(np.int64)


@dataclass
class _ChunkTable:
    """One chunk's dense index: ``vals`` each item's chunk value, ``order`` the items sorted by it, ``starts`` where
    each value's run begins in ``order`` (one entry per value, and the end), ``hs`` the hashes in that order."""

    bits: int
    vals: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    hs: np.ndarray


def _chunk_tables(h: np.ndarray, m: int, idx_dtype: type) -> list[_ChunkTable]:
    """The dense table of each of the ``m`` chunks of the 64 bits."""
    bounds = np.linspace(0, 64, m + 1).round().astype(int)
    tables = []
    for c in range(m):
        lo, hi = int(bounds[c]), int(bounds[c + 1])
        bits = hi - lo
        vals = ((h >> np.uint64(64 - hi)) & np.uint64((1 << bits) - 1)).astype(np.int32)
        order = np.argsort(vals, kind="stable").astype(idx_dtype)
        starts = np.zeros((1 << bits) + 1, idx_dtype)
        np.cumsum(np.bincount(vals, minlength=1 << bits), out=starts[1:])
        tables.append(_ChunkTable(bits, vals, order, starts, h[order]))
    return tables


@dataclass
class _Probe:
    """The probes of :func:`hash_pairs`: each task is a chunk's exact match or its masks sharing one top bit; the pairs
    within ``radius`` are collected in ``found`` as codes ``i * n + j`` (threads append to it)."""

    h: np.ndarray
    radius: int
    rc: int  # the most bits a chunk may differ by
    max_batch: int
    idx_dtype: type
    tables: list[_ChunkTable]
    found: list[np.ndarray] = field(default_factory=list)

    def tasks(self) -> list[tuple[int, int]]:
        """``(chunk, top bit)``, ``-1`` for the exact match; biggest first (a mask's top bit decides how many masks
        share it)."""
        m, rc = len(self.tables), self.rc
        tasks = [(c, -1) for c in range(m)] + [(c, t) for c in range(m) for t in range(self.tables[c].bits) if rc]
        tasks.sort(key=lambda ct: -(_n_masks(ct[1], rc - 1) if ct[1] >= 0 else 1))
        return tasks

    def run(self, task: tuple[int, int]) -> None:
        c, top = task
        t = self.tables[c]
        if top < 0:  # exact match of the chunk
            self.expand(np.arange(len(self.h), dtype=self.idx_dtype), self.h, t.vals, t, True)
            return
        sub = np.flatnonzero(((t.vals >> top) & 1) == 0).astype(self.idx_dtype)
        vsub, hsub = t.vals[sub], self.h[sub]
        for r in range(self.rc):
            for combo in itertools.combinations(range(top), r):
                mask = (1 << top) | sum(1 << b for b in combo)
                self.expand(sub, hsub, vsub ^ np.int32(mask), t, False)

    def expand(self, src: np.ndarray, hsrc: np.ndarray, q: np.ndarray, t: _ChunkTable, exact: bool) -> None:
        """Check the items ``src`` (hashes ``hsrc``) against every item whose chunk value is ``q``, on all 64 bits."""
        n, max_batch, starts, order, hs = len(self.h), self.max_batch, t.starts, t.order, t.hs
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
            ok = np.flatnonzero(d <= self.radius)
            if len(ok):
                ii = np.repeat(src[sl], c_sl)[ok].astype(np.int64)
                jj = order[pos[ok]].astype(np.int64)
                if exact:
                    keep = ii < jj
                    ii, jj = ii[keep], jj[keep]
                a, b = np.minimum(ii, jj), np.maximum(ii, jj)
                self.found.append(a * n + b)
            cut = sl.stop


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


def candidate_pairs(sig: Signatures, idx: np.ndarray, params: DedupeParams) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (as indices into ``idx``) and their hash distance (the smaller of the two views')."""
    workers = resolve_workers(params.workers)
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
