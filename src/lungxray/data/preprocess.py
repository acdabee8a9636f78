"""The preprocess stage: decode every image of the split once into compact uint8 arrays.

For each split (train / val / test, and ``test_official``: the sources' whole official test set in benchmark mode,
empty otherwise) one ``.npy`` file of shape ``(N, S, S)`` (8-bit greyscale, S =
``preprocess.image_size``) is written, plus ``index.csv`` (split, row, id, label, label index, source, unit: the split
unit, i.e. the union of dedupe group and patient that the split kept together, which the evaluation's bootstrap
resamples; an input without units makes each image its own) and
``stats.json`` (classes, per-split class counts, mean/std of the training pixels used for normalisation). Training
reads these with ``np.load(mmap_mode='r')`` and never decodes a JPEG/PNG again; greyscale is replicated to 3 channels
only at batch time.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image
from pydantic import Field

from lungxray.core import schema
from lungxray.core.config import Strict
from lungxray.core.errors import LungxrayError
from lungxray.core.io import allocate_npy, progress_bar, writing
from lungxray.core.parallel import process_pool, resolve_workers
from lungxray.core.schema import DEFAULT_MAX_PIXELS
from lungxray.images.decode import ImageRejected, open_grey
from lungxray.images.pixels import pixel_stats

# written beside them: the official test set whole (benchmark mode, see split.official_test_set; empty otherwise)
PROCESSED_SPLITS = (*schema.SPLITS, schema.OFFICIAL_TEST_SPLIT)
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "lanczos": Image.Resampling.LANCZOS, "area": Image.Resampling.BOX}


class PreprocessParams(Strict):

    image_size: int = Field(224, ge=16, le=1024, description="side of the square arrays")
    aspect: Literal["stretch", "pad", "crop"] = Field(
        "pad", description="stretch to square, pad the short side (black), or crop: trim uniform black/white borders "
                           "and frames first, then pad")
    resample: Literal["bilinear", "bicubic", "lanczos", "area"] = Field(
        "area", description="Pillow filter of the resize to image_size (area = box averaging)")
    workers: int = Field(0, ge=0, description="processes; 0 = one per core")


BORDER_DARK, BORDER_BRIGHT, BORDER_SHARE = 16, 240, 0.98  # a border line: 98% of its pixels are <= 16 or >= 240


def content_box(a: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` (exclusive ends) of ``a`` (2-D uint8) without its outer border lines: rows and
    columns, from each edge inwards, of which at least 98% of the pixels are black (<= 16) or white (>= 240), so a
    white frame around black padding goes too (its sides cross the padding's lines). A blank image (every line a border)
    keeps its whole extent."""
    def content(lines: np.ndarray) -> tuple[int, int] | None:  # first and end of the lines (rows of ``lines``) kept
        keep = ((lines <= BORDER_DARK) | (lines >= BORDER_BRIGHT)).mean(1) < BORDER_SHARE
        return (int(keep.argmax()), len(keep) - int(keep[::-1].argmax())) if keep.any() else None

    rows = content(a)
    cols = content(a[rows[0]:rows[1]].T) if rows else None
    if rows is None or cols is None:
        return 0, a.shape[0], 0, a.shape[1]
    return rows[0], rows[1], cols[0], cols[1]


def to_square(grey: Image.Image, size: int, aspect: str, resample: str) -> np.ndarray:
    """Resize an 8-bit greyscale image to ``size x size``: stretching, padding the short side with black, or (crop)
    trimming its uniform borders (:func:`content_box`) before padding."""
    method = _RESAMPLE[resample]
    if aspect == "crop":
        top, bottom, left, right = content_box(np.asarray(grey, dtype=np.uint8))
        grey = grey.crop((left, top, right, bottom))
    if aspect == "stretch":
        return np.asarray(grey.resize((size, size), method), dtype=np.uint8)
    w, h = grey.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    out = np.zeros((size, size), dtype=np.uint8)
    small = np.asarray(grey.resize((nw, nh), method), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top: top + nh, left: left + nw] = small
    return out


def load_square(path: str, size: int, aspect: str = "pad", resample: str = "area",
                max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode any image file (any mode, EXIF orientation applied) to a ``size x size`` uint8 array; a file over
    ``max_pixels`` (or otherwise unusable) raises :class:`~lungxray.images.decode.ImageRejected` without being
    decoded."""
    grey, _ = open_grey(path, draft_size=size, max_pixels=max_pixels)
    return to_square(grey, size, aspect, resample)


def preprocess_record(stats: dict) -> dict:
    """How a processed folder was made (its ``stats.json``), i.e. what a new image must go through to look like the
    images a model was trained on: ``image_size``, ``aspect``, ``resample`` (a folder written before ``aspect`` or
    ``resample`` were recorded was made with the defaults)."""
    defaults = PreprocessParams(image_size=stats["image_size"])
    return {"image_size": int(stats["image_size"]), "aspect": stats.get("aspect", defaults.aspect),
            "resample": stats.get("resample", defaults.resample)}


_OPEN: dict[str, np.ndarray] = {}  # per worker process: the split array files it writes into


def _job(args: tuple[str, int, str, str, int, str, int]) -> tuple[int, int] | str:
    """Decode one image and write it straight into row ``row`` of the split's array file (no pickling of pixels
    back to the parent). Returns (sum of pixel values, sum of their squares) for the statistics, or an error."""
    path, size, aspect, resample, max_pixels, array_file, row = args
    try:
        arr = _OPEN.get(array_file)
        if arr is None:
            _OPEN.clear()  # one split at a time
            arr = _OPEN[array_file] = np.load(array_file, mmap_mode="r+")
        img = load_square(path, size, aspect, resample, max_pixels)
        arr[row] = img
        wide = img.astype(np.int64).ravel()
        return int(wide.sum()), int(wide @ wide)
    except ImageRejected as e:  # the words of fetch's rejected report
        return e.detail
    except Exception as e:  # reported by the parent with the file name
        return f"{type(e).__name__}: {e}"


def run_preprocess(split_df: pd.DataFrame, classes: list[str], params: PreprocessParams, out_dir: Path,
                   progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Write ``out_dir/{train,val,test}.npy``, ``index.csv`` and ``stats.json``; return the stats. Images over
    ``max_pixels`` (``fetch.max_pixels``) are not decoded: they stop the stage like any file that changed since fetch.
    The arrays' disk space is taken before any image is decoded; a disk too small (or one that fills while the tables
    are written) stops the stage with one :class:`~lungxray.core.errors.DiskFullError` line, the previous ``out_dir``
    intact and nothing partial left."""
    missing = sorted(set(split_df.label) - set(classes))
    if missing:
        raise LungxrayError(f"labels {missing} in the split are not in fetch.classes {classes}")
    df = split_df.sort_values(["split", "id"], kind="stable").reset_index(drop=True)
    parts = {split: df[df.split == split].reset_index(drop=True) for split in PROCESSED_SPLITS}
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    size = params.image_size
    _allocate_arrays(tmp, out_dir, {split: (len(part), size, size) for split, part in parts.items()})
    workers = resolve_workers(params.workers)
    index_rows = []
    stats: dict = {"classes": list(classes), "image_size": size, "aspect": params.aspect,
                   "resample": params.resample, "splits": {}}
    total, total_sq = 0, 0
    try:
        with process_pool(workers) as pool:
            for split, part in parts.items():
                array_file = str(tmp / f"{split}.npy")  # the workers write its rows
                jobs = [(p, size, params.aspect, params.resample, max_pixels, array_file, i)
                        for i, p in enumerate(part.path)]
                it = pool.imap(_job, jobs, chunksize=16)
                for i, res in enumerate(progress_bar(it, total=len(jobs), desc=f"preprocess {split}", unit="img",
                                                     disable=not progress, mininterval=1.0)):
                    if isinstance(res, str):
                        raise LungxrayError(
                            f"cannot decode {part.path[i]} ({res}); it passed the fetch stage, so the file changed "
                            f"since: rerun `dvc repro` to fetch it again")
                    if split == "train":
                        total += res[0]
                        total_sq += res[1]
                index_rows.append(_index_rows(split, part, classes))
                counts = part.label.value_counts()
                stats["splits"][split] = {"images": int(len(part)),
                                          "per_class": {c: int(counts.get(c, 0)) for c in classes}}
        n = stats["splits"]["train"]["images"] * size * size
        if n == 0:
            raise LungxrayError("the train split is empty: check the split ratios and the data")
        stats.update(pixel_stats(total, total_sq, n))  # exact: integer sums gathered by the workers
        with writing(out_dir, folder=True, partial=tmp, cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True)):
            pd.concat(index_rows, ignore_index=True).to_csv(tmp / "index.csv", index=False, lineterminator="\n")
            (tmp / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)  # the folder appears complete or not at all
    return stats


def _index_rows(split: str, part: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """The rows of ``index.csv`` for one split: each image's row in its array, with id, label, source and unit."""
    return pd.DataFrame({
        "split": split, "row": np.arange(len(part)), "id": part.id.to_numpy(), "label": part.label.to_numpy(),
        "label_idx": part.label.map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64),
        "source": part["source"].to_numpy() if "source" in part else "",
        "unit": part["unit"].to_numpy() if "unit" in part else part.id.to_numpy()})


def _allocate_arrays(tmp: Path, out_dir: Path, shapes: dict[str, tuple[int, int, int]]) -> None:
    """Every split's array file in ``tmp``, its disk space taken before any image is decoded
    (:func:`lungxray.core.io.allocate_npy`): a disk too small stops here with one clear error (a full disk under a
    memory map would kill a worker, and the stage would wait for it forever), and nothing is left in ``tmp``."""
    with writing(out_dir, folder=True, partial=tmp, cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True)):
        tmp.mkdir(parents=True)
        for split, shape in shapes.items():
            allocate_npy(tmp / f"{split}.npy", shape, np.uint8)


def load_split(processed: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images memmap (N, S, S) uint8, labels (N,) int64) of one split."""
    processed = Path(processed)
    images = np.load(processed / f"{split}.npy", mmap_mode="r")
    index = pd.read_csv(processed / "index.csv")
    labels = index[index.split == split].sort_values("row").label_idx.to_numpy(dtype=np.int64)
    if len(labels) != len(images):
        raise LungxrayError(f"{processed}: {split}.npy has {len(images)} images but index.csv {len(labels)} rows; "
                            f"rerun the preprocess stage")
    return images, labels
