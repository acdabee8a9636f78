"""The folds of leave-one-source-out: which images each fold trains, selects and tests on, and its fold folder.

Rules (they decide what an external figure means):

* The kept images are the rows of ``data/processed/index.csv`` in the train, val and test splits (the benchmark
  mode's ``test_official`` copies are not kept images and take no part).
* Holding out source ``S``: the fold's **test** set is every kept image of ``S``, whatever its split; its **train** and
  **val** sets are the other sources' train and val images. Their test images are not used.
* Leakage: no image whose split unit (``unit``: the union of dedupe group and patient) also occurs among the images of
  ``S`` trains or selects the model: such images are excluded from the fold's train and val sets, and counted
  (``excluded``). Copies of one X-ray are already one kept image (dedupe), so the units carry the patients that two
  sources share.
* A fold folder has the preprocess stage's layout (``train.npy``, ``val.npy``, ``test.npy``, ``index.csv``,
  ``stats.json`` with the fold's own training mean/std), so :func:`lungxray.train.fit.train_model` trains on it
  unchanged. Its ``index.csv`` keeps each image's original split (``source_split``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lungxray.core import schema
from lungxray.core.errors import LungxrayError
from lungxray.images.pixels import pixel_stats

log = logging.getLogger(__name__)

ARRAY_FILES = tuple(f"{split}.npy" for split in schema.SPLITS)
_CHUNK = 1024  # images copied at a time: a fold folder is written without holding a whole split in memory


@dataclass(frozen=True)
class Fold:
    """One held-out source: the index rows of its train, val and test sets, and what the leakage rule removed."""

    held_out: str
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    excluded: dict  # {"train": n, "val": n}: other sources' images sharing a unit with the held-out source

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "val": self.val, "test": self.test}


def kept_index(processed: Path) -> pd.DataFrame:
    """The kept images of the processed data (train, val, test rows of ``index.csv``, in split and row order); they
    must carry their source and split unit."""
    path = Path(processed) / "index.csv"
    if not path.exists():
        raise LungxrayError(f"{path} is missing: run the preprocess stage first (dvc repro preprocess)")
    index = pd.read_csv(path, keep_default_na=False, dtype={"id": str, "unit": str, "source": str, "label": str})
    missing = {"source", "unit"} - set(index.columns)
    if missing:
        raise LungxrayError(f"{path} has no {sorted(missing)} column (written by an older preprocess): rerun "
                            f"`dvc repro` so that preprocess writes it")
    index = index[index.split.isin(schema.SPLITS)].copy()
    index["split"] = pd.Categorical(index.split, categories=list(schema.SPLITS), ordered=True)
    return index.sort_values(["split", "row"]).reset_index(drop=True).astype({"split": str})


def source_counts(index: pd.DataFrame) -> dict[str, int]:
    """Kept images per source, sorted by name."""
    return {str(s): int(n) for s, n in index.groupby("source").size().sort_index().items()}


def make_fold(index: pd.DataFrame, held_out: str) -> Fold:
    """The fold that holds ``held_out`` out of :func:`kept_index` (rules in the module docstring)."""
    if held_out not in set(index.source):
        raise LungxrayError(f"source {held_out!r} has no kept image; sources: {sorted(set(index.source))}")
    test = index[index.source == held_out]
    shared_units = set(test.unit)
    others = index[index.source != held_out]
    leaks = others.unit.isin(shared_units)
    parts = {}
    for split in ("train", "val"):
        part = others[others.split == split]
        parts[split] = part[~leaks[part.index]]
    excluded = {split: int((leaks & (others.split == split)).sum()) for split in ("train", "val")}
    return Fold(held_out, parts["train"], parts["val"], test, excluded)


def fold_problem(fold: Fold) -> str | None:
    """Why ``fold`` cannot be trained (no train or no val image left), or None."""
    for split in ("train", "val"):
        if fold.parts()[split].empty:
            return (f"no {split} image is left in the other sources once {fold.held_out!r} is held out, so no model "
                    f"can be trained (and selected) without it")
    return None


# ---------------------------------------------------------------------------------------------------------------------
# the fold folder


def write_fold(fold: Fold, processed: Path, out_dir: Path) -> dict:
    """Write the fold folder (arrays, ``index.csv``, ``stats.json``) at ``out_dir``, complete or not at all; return
    its stats. Rows come from ``processed``'s split arrays (memory-mapped, copied in chunks)."""
    processed, out_dir = Path(processed), Path(out_dir)
    base = json.loads((processed / "stats.json").read_text())
    classes, size = base["classes"], int(base["image_size"])
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sources = {split: np.load(processed / f"{split}.npy", mmap_mode="r") for split in schema.SPLITS}
    rows, stats = [], {**{k: base[k] for k in ("classes", "image_size") if k in base}, "splits": {},
                       "aspect": base.get("aspect"), "resample": base.get("resample"), "held_out": fold.held_out}
    try:
        for split, part in fold.parts().items():
            arr = np.lib.format.open_memmap(tmp / f"{split}.npy", mode="w+", dtype=np.uint8,
                                            shape=(len(part), size, size))
            _copy_rows(part, sources, arr)
            if split == "train":
                stats.update(_pixel_stats(arr))
            arr.flush()
            del arr
            counts = part.label.value_counts()
            stats["splits"][split] = {"images": int(len(part)),
                                      "per_class": {c: int(counts.get(c, 0)) for c in classes}}
            rows.append(part.assign(source_split=part.split, split=split, row=np.arange(len(part))))
        cols = ["split", "row", "id", "label", "label_idx", "source", "unit", "source_split"]
        pd.concat(rows, ignore_index=True)[cols].to_csv(tmp / "index.csv", index=False, lineterminator="\n")
        (tmp / "stats.json").write_text(json.dumps({k: v for k, v in stats.items() if v is not None}, indent=2,
                                                   sort_keys=True) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return stats


def _copy_rows(part: pd.DataFrame, sources: dict[str, np.ndarray], out: np.ndarray) -> None:
    """Copy the images of ``part`` (rows of the processed splits) into ``out`` in order, a chunk at a time."""
    at = 0
    for split, rows in _runs(part):
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start:start + _CHUNK]
            out[at:at + len(chunk)] = sources[split][chunk]
            at += len(chunk)


def _runs(part: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    """``part``'s rows as consecutive (split, row numbers) runs, in order."""
    key = part.split.to_numpy()
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, dtype=int)
    ends = np.r_[starts[1:], len(key)]
    rows = part.row.to_numpy(dtype=np.int64)
    return [(str(key[s]), rows[s:e]) for s, e in zip(starts, ends)]


def _pixel_stats(arr: np.ndarray) -> dict:
    """Mean and std of the training pixels scaled to 0..1, exact (as the preprocess stage computes them)."""
    total, total_sq, n = 0, 0, arr.size
    for start in range(0, len(arr), _CHUNK):
        wide = np.asarray(arr[start:start + _CHUNK], dtype=np.int64).ravel()
        total += int(wide.sum())
        total_sq += int(wide @ wide)
    if n == 0:
        raise LungxrayError("a fold has no training image")
    return pixel_stats(total, total_sq, n)


def drop_arrays(fold_dir: Path) -> None:
    """Remove a finished fold's arrays (a copy of the processed data); its index.csv and stats.json stay as the record
    of what it trained and was tested on."""
    for name in ARRAY_FILES:
        (Path(fold_dir) / name).unlink(missing_ok=True)
