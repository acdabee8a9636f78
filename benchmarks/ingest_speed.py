"""Ingestion rate of the fetch stage beside the bare decode rate of the same files, on the same cores, in one run.

    python benchmarks/ingest_speed.py [--data ../shared/data] [--workers N] [--repeat 3]

"bare decode" = Pillow open + full load of each file (what any loader must at least do), in a pool of the same size.
"ingest" = the fetch stage's probe: read bytes, sha256, header facts, EXIF, full decode check (JPEG in DCT-scaled
draft mode, which still reads the whole entropy-coded stream, so truncation is still caught).
CPU speed here swings between runs: compare the ratio, which is measured in one process, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path

from lungxray.fetch.listing import list_files
from lungxray.fetch.probing import probe_all

EXTS = [".png", ".jpg", ".jpeg"]


def bare_decode(path: str) -> int:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as img:
            img.load()
            return img.size[0]
    except Exception:
        return -1


def bare_rate(paths: list[str], workers: int) -> float:
    t = time.perf_counter()
    with get_context("fork").Pool(workers) as pool:
        list(pool.imap(bare_decode, paths, chunksize=16))
    return len(paths) / (time.perf_counter() - t)


def ingest_rate(paths: list[str], workers: int) -> float:
    t = time.perf_counter()
    list(probe_all(paths, max_pixels=10**9, workers=workers, progress=False))
    return len(paths) / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    root = Path(args.data)
    if not root.is_dir():
        print(f"no data folder at {root}: pass --data FOLDER with chest X-rays", file=sys.stderr)
        return 2
    rels, _ = list_files(root, [], ["*unreadable*"], EXTS)
    paths = [str(root / r) for r in rels]
    total_mb = sum(os.path.getsize(p) for p in paths) / 2**20
    print(f"{len(paths)} image files ({total_mb:.0f} MiB) under {root}, {args.workers} worker(s), best of {args.repeat}")
    bare_decode(paths[0]), ingest_rate(paths[:64], 1)  # warm imports and the page cache
    bare_rate(paths, args.workers)
    bare, ingest = [], []
    for _ in range(args.repeat):  # interleaved, so drifting CPU speed hits both alike
        bare.append(bare_rate(paths, args.workers))
        ingest.append(ingest_rate(paths, args.workers))
    b, i = max(bare), max(ingest)
    print(f"{'':22}{'images/s':>10}")
    print(f"{'bare decode (PIL load)':22}{b:>10.1f}")
    print(f"{'fetch ingest (probe)':22}{i:>10.1f}")
    print(f"ratio ingest / bare decode: {i / b:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
