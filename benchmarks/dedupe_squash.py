"""Squashed re-publications among look-alike films: is every copy compared and accepted? (issue 9, item 6)

Every wide Kermany film of ``../shared/data`` (``jtiptj_test`` NORMAL/PNEUMONIA and ``ieee8023`` ``person*`` JPEGs with
an aspect ratio of 1.2-1.9, like the 1208x776 film whose 400x300 copy slipped through) is squashed to 400x300 (aspect
not kept, as ``skytells_covid19_xray`` publishes its copies) by nearest, antialiased bilinear (Pillow's resize) or
pointwise bilinear without antialiasing (OpenCV's INTER_LINEAR), saved as JPEG q75-95. The copies join every distinct
image of the shared sources and the PneumoniaMNIST films: the look-alikes that crowd each film's nearest-neighbour
candidates in the real manifest. Reported per resampler: the share of (original, copy) pairs that the candidate
search proposes, that the verification accepts, and both (= grouped).

Usage: python benchmarks/dedupe_squash.py [--workers 0] [--mnist 5232] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import glob
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from dedupe_quality import list_originals, mnist_films  # noqa: E402

from lungxray.data.dedupe import DedupeParams, candidate_pairs, compute_signatures, verify_pairs  # noqa: E402

RESAMPLERS = ("nearest", "bilinear", "pointwise")


def wide_films(data: Path) -> list[str]:
    files = sorted(glob.glob(str(data / "jtiptj_test" / "NORMAL" / "*.jpeg"))
                   + glob.glob(str(data / "jtiptj_test" / "PNEUMONIA" / "*.jpeg"))
                   + glob.glob(str(data / "ieee8023_fork_suyash091" / "images" / "person*")))
    out = []
    for f in files:
        with Image.open(f) as im:
            if 1.2 < im.size[0] / im.size[1] < 1.9:
                out.append(f)
    return out


def squash_400x300(path: str, how: str) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("L")
        if how == "pointwise":
            w, h = im.size
            return im.transform((400, 300), Image.Transform.AFFINE, (w / 400, 0, 0, 0, h / 300, 0),
                                resample=Image.Resampling.BILINEAR)
        return im.resize((400, 300), Image.Resampling.NEAREST if how == "nearest" else Image.Resampling.BILINEAR)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--mnist", type=int, default=5232)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    data = ROOT / ".." / "shared" / "data"
    rng = np.random.default_rng(a.seed)
    params = DedupeParams(workers=a.workers)
    t0 = time.time()
    crowd = list_originals(data)
    index = {str(Path(p).resolve()): i for i, p in enumerate(crowd)}
    films = [f for f in wide_films(data) if str(Path(f).resolve()) in index]
    with tempfile.TemporaryDirectory() as tmp:
        crowd += mnist_films(data, tmp, a.mnist, rng)
        copies, truth = [], []  # truth: (index of the original, resampler)
        for k, f in enumerate(films):
            how = RESAMPLERS[k % len(RESAMPLERS)]
            copies.append(f"{tmp}/s{k}.jpg")
            squash_400x300(f, how).save(copies[-1], quality=int(rng.integers(75, 96)))
            truth.append((index[str(Path(f).resolve())], how))
        paths = crowd + copies
        sig = compute_signatures(paths, workers=params.workers, progress=False, params=params)
    pairs, _ = candidate_pairs(sig, np.arange(len(paths)), params)
    proposed = set(map(tuple, pairs.tolist()))
    a_idx = np.array([o for o, _ in truth])
    b_idx = np.arange(len(crowd), len(paths))
    score, low, overlap = verify_pairs(sig.thumbs[a_idx], sig.thumbs[b_idx], params)
    accepted = (score >= params.verify_threshold) & (low >= params.verify_min_low) & \
        (overlap >= params.verify_min_overlap)
    stats = collections.defaultdict(lambda: [0, 0, 0, 0])  # n, candidate, accepted, both
    misses = []
    for j, (o, how) in enumerate(truth):
        cand = (min(o, b_idx[j]), max(o, b_idx[j])) in proposed
        for key in (how, "ALL"):
            s = stats[key]
            s[0] += 1
            s[1] += cand
            s[2] += bool(accepted[j])
            s[3] += cand and bool(accepted[j])
        if not (cand and accepted[j]):
            misses.append(f"  missed ({how}; candidate {cand}, score {score[j]:.3f}): {paths[o]}")
    print(f"{len(films)} wide Kermany films squashed to 400x300 among {len(crowd)} images "
          f"({len(crowd) - a.mnist} distinct shared-source images + {a.mnist} PneumoniaMNIST films); "
          f"{len(pairs)} candidate pairs; {time.time() - t0:.0f} s")
    print(f"{'resampler':<12}{'pairs':>7}{'candidate':>11}{'accepted':>10}{'grouped':>9}")
    for key in (*RESAMPLERS, "ALL"):
        n, c, acc, both = stats[key]
        print(f"{key:<12}{n:>7}{c / n:>11.3f}{acc / n:>10.3f}{both / n:>9.3f}")
    print("\n".join(misses))


if __name__ == "__main__":
    main()
