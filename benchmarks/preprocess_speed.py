"""Preprocess stage rate beside the bare decode rate of the same files, on the same cores, in one run.

    python benchmarks/preprocess_speed.py [--data ../shared/data] [--size 224] [--workers N] [--repeat 2]

"bare decode" = Pillow open + full load of each file (what any loader must at least do), in a pool of the same size.
"preprocess" = the stage's work per image: decode to 8-bit grey from any mode with EXIF orientation applied (JPEGs
decoded at reduced scale when the target size allows it), resize/pad to S x S, write into the uint8 array file.
CPU speed here swings between runs: compare the ratio measured in one process, not absolute numbers across runs.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from lungxray.data.preprocess import PreprocessParams, run_preprocess

sys.path.insert(0, str(Path(__file__).parent))
from ingest_speed import arguments, best_rates, image_files, print_ratio  # noqa: E402  (same baseline as fetch)


def main() -> int:
    ap = arguments(__doc__, repeat=2)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    rels = image_files(args.data)
    if rels is None:
        return 2
    paths = [str(Path(args.data) / r) for r in rels]
    split = pd.DataFrame({"id": rels, "path": paths, "label": "normal", "split": "train", "source": "bench"})
    params = PreprocessParams(image_size=args.size, workers=args.workers)
    print(f"{len(paths)} image files under {args.data}, {args.workers} worker(s), {args.size}px, best of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        def preprocess_rate(i: int) -> float:
            t = time.perf_counter()
            run_preprocess(split, ["normal"], params, Path(tmp) / f"p{i}", progress=False)
            return len(paths) / (time.perf_counter() - t)

        b, p = best_rates(paths, args.workers, args.repeat, preprocess_rate)
    print_ratio("bare decode (PIL open + load)", b, "preprocess stage (decode+resize)", p, "preprocess / bare decode")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
