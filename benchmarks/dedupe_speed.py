"""Speed of the dedupe: (a) signature rate vs bare decode rate, (b) candidate search on 1M synthetic hashes,
(c) the naive pairwise loop for comparison. Prints figures; never asserts on wall time.

Usage: python benchmarks/dedupe_speed.py [--quick] [--workers N] [--files 600] [--hashes 1000000]
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import os
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from lungxray.data.dedupe import DedupeParams, compute_signatures, hash_pairs  # noqa: E402


def _decode(p: str) -> int:
    from PIL import Image

    with Image.open(p) as im:
        im.load()
        return im.size[0]


def bare_decode(paths: list[str], workers: int) -> float:
    t = time.perf_counter()
    if workers <= 1:
        for p in paths:
            _decode(p)
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            list(pool.imap(_decode, paths, chunksize=4))
    return time.perf_counter() - t


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 10 ms, minus the start)."""

    def __enter__(self):
        self.start = self._rss()
        self.peak = self.start
        self.stop = False
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.stop = True
        self.th.join()
        self.peak = max(self.peak, self._rss())


def planted(n: int, n_pairs: int, radius: int, rng) -> tuple[np.ndarray, set]:
    h = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) ^ (
        rng.integers(0, 2, size=n).astype(np.uint64) << np.uint64(63))
    src = rng.choice(n // 2, size=n_pairs, replace=False)
    dst = n // 2 + rng.choice(n - n // 2, size=n_pairs, replace=False)
    truth = set()
    for s, d in zip(src, dst):
        k = int(rng.integers(0, radius + 1))
        bits = rng.choice(64, size=k, replace=False)
        v = int(h[s])
        for b in bits:
            v ^= 1 << int(b)
        h[d] = np.uint64(v)
        truth.add((int(min(s, d)), int(max(s, d))))
    return h, truth


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--files", type=int, default=600)
    ap.add_argument("--hashes", type=int, default=1_000_000)
    ap.add_argument("--radius", type=int, default=8)
    ap.add_argument("--naive", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.quick:
        a.files, a.hashes, a.naive = 150, 100_000, 5_000
    workers = a.workers or os.cpu_count() or 1
    rows = []
    # (a) signatures vs bare decode
    data = ROOT / ".." / "shared" / "data"
    paths = sorted(p for s in ("jtiptj_test", "skytells_covid19_xray", "ieee8023_fork_suyash091/images",
                               "figure1_covid/images")
                   for p in glob.glob(str(data / s / "**" / "*"), recursive=True)
                   if p.lower().endswith((".png", ".jpg", ".jpeg")))[: a.files]
    if paths:
        import hashlib

        # the pipeline knows every file's sha256 from the fetch manifest, so it is passed in (not timed)
        shas = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
        bare_decode(paths[:20], 1)  # warm the page cache
        # CPU speed drifts between (and within) runs: interleave the repeats and compare sums from this run only
        t_dec = t_sig = t_sig_sha = 0.0
        ratios = []
        for _ in range(a.repeats):
            d = bare_decode(paths, workers)
            t = time.perf_counter()
            compute_signatures(paths, workers=workers, progress=False, params=DedupeParams(), sha256s=shas)
            s_ = time.perf_counter() - t
            t_dec, t_sig = t_dec + d, t_sig + s_
            ratios.append(d / s_)
        t = time.perf_counter()
        compute_signatures(paths, workers=workers, progress=False, params=DedupeParams())
        t_sig_sha = time.perf_counter() - t
        mpx = sum(Image_size(p) for p in paths) / 1e6
        rows.append(("(a) bare decode (PIL open+load)", f"{len(paths)} files, {mpx:.0f} Mpx, {workers} workers, "
                     f"{a.repeats} interleaved repeats", f"{a.repeats * len(paths) / t_dec:.1f} img/s", ""))
        rows.append(("(a) signatures (decode+trim+hash+thumb), sha256 known", "same files/workers",
                     f"{a.repeats * len(paths) / t_sig:.1f} img/s",
                     f"ratio {t_dec / t_sig:.2f}x of bare decode (target >= 0.8); per repeat "
                     + " ".join(f"{r:.2f}" for r in ratios)))
        rows.append(("(a) signatures incl. sha256 of the bytes", "same files/workers, once",
                     f"{len(paths) / t_sig_sha:.1f} img/s",
                     f"ratio {t_dec / a.repeats / t_sig_sha:.2f}x of the mean bare decode (not the pipeline's path)"))
    else:
        rows.append(("(a)", f"{data} absent: skipped", "", ""))
    # (b) candidate search on many hashes
    rng = np.random.default_rng(0)
    n_pl = max(1000, a.hashes // 100)
    h, truth = planted(a.hashes, n_pl, a.radius, rng)
    with PeakRSS() as mem:
        t = time.perf_counter()
        pairs, d = hash_pairs(h, a.radius, workers=workers)
        t_mih = time.perf_counter() - t
    found = set(map(tuple, pairs.tolist()))
    rec = len(truth & found) / len(truth)
    rows.append((f"(b) multi-index hash search, radius {a.radius}", f"{a.hashes:,} hashes, {n_pl:,} planted, {workers} threads",
                 f"{t_mih:.1f} s, peak +{(mem.peak - mem.start) / 2**30:.2f} GiB",
                 f"recall of planted {rec:.4f}; {len(pairs):,} pairs found (target <= 60 s, <= 2 GiB)"))
    # (c) naive pairwise (numpy, blocked) and python loop
    hn = h[: a.naive]
    t = time.perf_counter()
    cnt = 0
    for s in range(0, len(hn), 2048):
        cnt += int((np.bitwise_count(hn[s:s + 2048, None] ^ hn[None, :]) <= a.radius).sum())
    t_np = time.perf_counter() - t
    m = 1500
    hl = [int(x) for x in hn[:m]]
    t = time.perf_counter()
    c2 = 0
    for i in range(m):
        hi = hl[i]
        for j in range(i + 1, m):
            if (hi ^ hl[j]).bit_count() <= a.radius:
                c2 += 1
    t_py = (time.perf_counter() - t) * (a.naive / m) ** 2
    t_py_1m = t_py * (a.hashes / a.naive) ** 2
    rows.append(("(c) naive all-pairs, numpy blocked", f"{a.naive:,} hashes", f"{t_np:.1f} s",
                 f"extrapolated to {a.hashes:,}: {t_np * (a.hashes / a.naive) ** 2 / 3600:.1f} h"))
    rows.append(("(c) naive all-pairs, python loop", f"{a.naive:,} hashes (measured on {m:,}, extrapolated n^2)",
                 f"{t_py:.0f} s", f"extrapolated to {a.hashes:,}: {t_py_1m / 86400:.1f} days"))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(x.ljust(w[i]) for i, x in enumerate(r)))


def Image_size(p: str) -> int:
    from PIL import Image

    with Image.open(p) as im:
        return im.size[0] * im.size[1]


if __name__ == "__main__":
    main()
