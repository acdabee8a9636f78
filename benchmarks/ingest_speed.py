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
from typing import Callable

from lungxray.data.fetch.listing import list_files
from lungxray.data.fetch.probing import probe_all

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


# --- what this benchmark and preprocess_speed.py share: the files, the interleaved rounds, the table -------------------


def arguments(doc: str, repeat: int) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=repeat)
    return ap


def image_files(data: str) -> list[str] | None:
    """The PNG/JPEG files under ``data`` (relative names; the folders of corrupt files left out), or None with a
    message when there is no such folder."""
    root = Path(data)
    if not root.is_dir():
        print(f"no data folder at {root}: pass --data FOLDER with chest X-rays", file=sys.stderr)
        return None
    return list_files(root, [], ["*unreadable*"], EXTS)[0]


def best_rates(paths: list[str], workers: int, repeat: int, stage_rate: Callable[[int], float]) -> tuple[float, float]:
    """The best bare-decode rate and the best ``stage_rate(round)`` over ``repeat`` rounds, interleaved so that
    drifting CPU speed hits both alike, after a warm-up of imports and the page cache."""
    bare_rate(paths[:64], workers)
    bare, stage = [], []
    for i in range(repeat):
        bare.append(bare_rate(paths, workers))
        stage.append(stage_rate(i))
    return max(bare), max(stage)


def print_ratio(bare_label: str, bare: float, stage_label: str, stage: float, ratio: str) -> None:
    width = max(len(bare_label), len(stage_label)) + 2
    print(f"{'':{width}}{'images/s':>10}")
    print(f"{bare_label:{width}}{bare:>10.1f}")
    print(f"{stage_label:{width}}{stage:>10.1f}")
    print(f"ratio {ratio}: {stage / bare:.2f}x")


def main() -> int:
    args = arguments(__doc__, repeat=3).parse_args()
    rels = image_files(args.data)
    if rels is None:
        return 2
    paths = [str(Path(args.data) / r) for r in rels]
    total_mb = sum(os.path.getsize(p) for p in paths) / 2**20
    print(f"{len(paths)} image files ({total_mb:.0f} MiB) under {args.data}, {args.workers} worker(s), "
          f"best of {args.repeat}")
    b, i = best_rates(paths, args.workers, args.repeat, lambda _: ingest_rate(paths, args.workers))
    print_ratio("bare decode (PIL load)", b, "fetch ingest (probe)", i, "ingest / bare decode")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
