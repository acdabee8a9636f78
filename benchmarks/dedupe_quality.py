"""Perturbation benchmark of the dedupe: pairwise precision/recall per alteration kind, vs plain phash baselines.

Ground truth (honest by construction):
* the real sources already contain duplicates among themselves, so originals are first deduped by sha256, then an
  original is used as the *source of synthetic copies* only if neither our method (find_groups over all originals)
  nor an exhaustive plain-phash check (imagehash.phash distance <= 10 to any other original) links it to another one;
* every other original stays in as a distractor, and so do PneumoniaMNIST films (28x28 downsamples of Kermany X-rays,
  ``--mnist``): in the real manifest these look-alikes crowd each film's nearest neighbours, the situation in which a
  squashed re-publication slipped through the candidate search (issue 9, item 6);
* metrics are computed only over pairs that involve at least one synthetic copy (pairs between two real originals
  have no trusted truth and are ignored). A pair is "true" iff both images derive from the same clean original.

Usage: python benchmarks/dedupe_quality.py [--originals 120] [--distractors 800] [--mnist 5232] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from lungxray.data.dedupe import DedupeParams, find_groups  # noqa: E402
from lungxray.images import alterations  # noqa: E402  (shared with tests/test_dedupe.py)

SOURCES = ["jtiptj_test", "skytells_covid19_xray", "ieee8023_fork_suyash091/images", "figure1_covid/images"]


def list_originals(data: Path) -> list[str]:
    seen, out = set(), []
    for s in SOURCES:
        for p in sorted(glob.glob(str(data / s / "**" / "*"), recursive=True)):
            if p.lower().endswith((".png", ".jpg", ".jpeg")):
                h = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                if h not in seen:
                    seen.add(h)
                    out.append(p)
    return out


def mnist_films(data: Path, out_dir: str, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` PneumoniaMNIST films written as PNG files (what the fetch stage makes of them)."""
    with np.load(data / "pneumoniamnist" / "pneumoniamnist_trainval.npz") as z:
        films = np.concatenate([z[k] for k in sorted(z.files) if k.endswith("_images")])
    paths = []
    for j in sorted(rng.choice(len(films), size=min(n, len(films)), replace=False)):
        paths.append(f"{out_dir}/m{j}.png")
        Image.fromarray(films[j]).save(paths[-1])
    return paths


def phash_of(p: str) -> int:
    with Image.open(p) as im:
        return int(str(imagehash.phash(im)), 16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--originals", type=int, default=120)
    ap.add_argument("--distractors", type=int, default=800)
    ap.add_argument("--mnist", type=int, default=5232, help="PneumoniaMNIST distractors (0 = none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.originals, a.distractors, a.mnist = 40, 200, 1000
    data = ROOT / ".." / "shared" / "data"
    rng = np.random.default_rng(a.seed)
    allo = list_originals(data)
    rng.shuffle(allo)
    pool = allo[: a.originals * 2 + a.distractors]
    params = DedupeParams(workers=a.workers)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        mnist = mnist_films(data, tmp, a.mnist, np.random.default_rng(a.seed + 1))
        # which originals are clean (no duplicate among the originals and the MNIST films by either method)
        every = pool + mnist
        odf = pd.DataFrame({"id": [f"o{i}" for i in range(len(every))], "source": "orig", "path": every, "label": "x"})
        og, _ = find_groups(odf, params, progress=False)
        ph = np.array([phash_of(p) for p in every], dtype=np.uint64)
        dist = np.bitwise_count(ph[: len(pool), None] ^ ph[None, :])
        dist[np.arange(len(pool)), np.arange(len(pool))] = 64
        clean = [i for i in range(len(pool)) if og.at[i, "group_size"] == 1 and dist[i].min() > 10]
        n_dirty = len(pool) - len(clean)
        chosen = clean[: a.originals]
        distractors = [i for i in range(len(pool)) if i not in set(chosen)][: a.distractors]
        kinds = list(alterations.KINDS)
        rows = []  # path, origin (index into pool, or negative: a distractor), kind
        for i in chosen:
            rows.append((pool[i], i, "original"))
        for i in distractors:
            rows.append((pool[i], -1 - i, "distractor"))
        for k, m in enumerate(mnist):
            rows.append((m, -1 - len(pool) - k, "distractor"))
        for j, i in enumerate(chosen):
            with Image.open(pool[i]) as im:
                im.load()
            # every original gets 3 copies of random kinds (each kind equally often overall)
            for k in (kinds[(3 * j + t) % len(kinds)] for t in range(3)):
                v, kw = alterations.KINDS[k](im, rng)
                rows.append((alterations.save_variant(v, kw, f"{tmp}/c{j}_{k}"), i, k))
        df = pd.DataFrame({"id": [f"r{n}" for n in range(len(rows))], "source": "bench",
                           "path": [r[0] for r in rows], "label": "x"})
        origin = np.array([r[1] for r in rows])
        kind = np.array([r[2] for r in rows])
        t1 = time.time()
        g, rep = find_groups(df, params, progress=False)
        t_ours = time.time() - t1
        group = g["group"].to_numpy()
        phs = np.array([phash_of(r[0]) for r in rows], dtype=np.uint64)
    copy_idx = np.flatnonzero(~np.isin(kind, ["original", "distractor"]))
    n = len(rows)
    # pairs involving >= 1 copy: (copy, anything else)
    pd_h = np.bitwise_count(phs[copy_idx][:, None] ^ phs[None, :])
    results = collections.OrderedDict()

    def tally(pred_fn):
        stats = collections.defaultdict(lambda: [0, 0, 0])  # tp, fp, fn per kind
        for r, c in enumerate(copy_idx):
            others = np.arange(n) != c
            # count each copy-copy pair once (from the smaller index)
            others &= ~(np.isin(np.arange(n), copy_idx) & (np.arange(n) < c))
            truth = (origin == origin[c]) & others
            pred = pred_fn(r, c) & others
            for key in (kind[c], "ALL"):
                s = stats[key]
                s[0] += int((truth & pred).sum())
                s[1] += int((~truth & pred).sum())
                s[2] += int((truth & ~pred).sum())
        return stats

    results["ours"] = tally(lambda r, c: group == group[c])
    results["phash<=8"] = tally(lambda r, c: pd_h[r] <= 8)
    results["phash<=4"] = tally(lambda r, c: pd_h[r] <= 4)
    print(f"images: {n} ({len(chosen)} clean originals x 3 copies = {len(copy_idx)} copies, "
          f"{len(distractors)} distractors + {len(mnist)} PneumoniaMNIST films); originals rejected as not provably "
          f"distinct: {n_dirty} of {len(pool)}")
    print(f"find_groups on the benchmark: {t_ours:.1f} s, candidates {rep['candidate_pairs']}, "
          f"verified {rep['verified_pairs']} (total incl. ground-truth prep {time.time() - t0:.0f} s)")
    print(f"{'kind':<12}" + "".join(f"{m:>24}" for m in results))
    print(f"{'':<12}" + "".join(f"{'prec   recall  (n true)':>24}" for _ in results))
    for k in kinds + ["ALL"]:
        line = f"{k:<12}"
        for m, st in results.items():
            tp, fp, fn = st[k]
            p = tp / (tp + fp) if tp + fp else float("nan")
            r = tp / (tp + fn) if tp + fn else float("nan")
            line += f"{p:>9.3f} {r:>7.3f} {tp + fn:>6d}"
        print(line)
    tp, fp, fn = results["ours"]["ALL"]
    prec, rec = tp / max(1, tp + fp), tp / max(1, tp + fn)
    print(f"target precision and recall >= 0.995: {'met' if min(prec, rec) >= 0.995 else 'NOT met'} "
          f"({tp} true pairs found, {fp} false, {fn} missed)")
    for c in copy_idx:  # what went wrong, to look at
        for o in np.flatnonzero((group == group[c]) != (origin == origin[c])):
            if o != c and not (o in set(copy_idx) and o < c):
                what = "missed" if origin[o] == origin[c] else "false"
                print(f"  {what}: {kind[c]} copy {rows[c][0]} ~ {kind[o]} {rows[o][0]}")


if __name__ == "__main__":
    main()
