"""Preprocess stage rate beside the bare decode rate of the same files, on the same cores, in one run.

    python benchmarks/preprocess_speed.py [--data ../shared/data] [--size 224] [--workers N] [--repeat 2]

"bare decode" = Pillow open + full load of each file (what any loader must at least do), in a pool of the same size.
"preprocess" = the stage's work per image: decode to 8-bit grey from any mode with EXIF orientation applied (JPEGs
decoded at reduced scale when the target size allows it), resize/pad to S x S, write into the uint8 array file.
CPU speed here swings between runs: compare the ratio measured in one process, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from lungxray.fetch.listing import list_files
from lungxray.preprocess import PreprocessParams, run_preprocess

sys.path.insert(0, str(Path(__file__).parent))
from ingest_speed import EXTS, bare_rate  # noqa: E402  (same bare-decode baseline as the fetch benchmark)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    root = Path(args.data)
    if not root.is_dir():
        print(f"no data folder at {root}: pass --data FOLDER with chest X-rays", file=sys.stderr)
        return 2
    rels, _ = list_files(root, [], ["*unreadable*"], EXTS)
    paths = [str(root / r) for r in rels]
    split = pd.DataFrame({"id": rels, "path": paths, "label": "normal", "split": "train", "source": "bench"})
    params = PreprocessParams(image_size=args.size, workers=args.workers)
    print(f"{len(paths)} image files under {root}, {args.workers} worker(s), {args.size}px, best of {args.repeat}")
    bare, prep = [], []
    with tempfile.TemporaryDirectory() as tmp:
        bare_rate(paths[:64], args.workers)  # warm imports and the page cache
        for i in range(args.repeat):  # interleaved, so drifting CPU speed hits both alike
            bare.append(bare_rate(paths, args.workers))
            t = time.perf_counter()
            run_preprocess(split, ["normal"], params, Path(tmp) / f"p{i}", progress=False)
            prep.append(len(paths) / (time.perf_counter() - t))
    b, p = max(bare), max(prep)
    print(f"{'':34}{'images/s':>10}")
    print(f"{'bare decode (PIL open + load)':34}{b:>10.1f}")
    print(f"{'preprocess stage (decode+resize)':34}{p:>10.1f}")
    print(f"ratio preprocess / bare decode: {p / b:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
