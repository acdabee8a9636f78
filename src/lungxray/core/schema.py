"""Stable names of the tables the stages pass along, where they live, and the label-conflict contract between them.

Later stages read these columns by name; renaming one is a breaking change.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable

SPLITS = ("train", "val", "test")  # the split stage's parts, in this order everywhere

# the files fetch reads (the default of fetch.image_extensions) and `lungxray dedupe` scans; other files are ignored
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")

# fetch -> data/interim/manifest.csv: one row per ingested (decodable, mapped, not dropped) image
MANIFEST_COLUMNS = [
    "id",  # "<source>/<path relative to the source root>", unique
    "source",  # source name from params
    "path",  # file path relative to the repository root (under data/raw/<source>/)
    "raw_label",  # label exactly as the source gives it (folder name, CSV value, MedMNIST index)
    "label",  # class of the taxonomy (fetch.classes)
    "patient",  # "<namespace>:<id>" or empty when unknown
    "official_split",  # train / val / test when the source defines one, else empty
    "sha256",  # of the file bytes
    "width",
    "height",
    "mode",  # Pillow mode as decoded: L, RGB, RGBA, P, I;16, CMYK, ...
    "bit_depth",  # bits per sample (8, 16, ...)
    "format",  # Pillow format: JPEG, PNG, ...
    "bytes",
    "orientation",  # EXIF orientation tag (1 = upright; 0 = none)
]

# fetch -> data/interim/rejected.csv: every file that looked like an image but could not be used
REJECTED_COLUMNS = ["source", "path", "raw_label", "reason", "detail", "bytes"]

DATA = Path("data")
RAW_DIR = DATA / "raw"
DOWNLOAD_DIR = DATA / "downloads"
CACHE_DIR = DATA / "cache"
INTERIM = DATA / "interim"
MANIFEST = INTERIM / "manifest.csv"
REJECTED = INTERIM / "rejected.csv"
REPORTS = Path("reports")
FETCH_SUMMARY = REPORTS / "fetch_summary.json"
METRICS = Path("metrics")
FETCH_METRICS = METRICS / "fetch.json"

# dedupe -> data/interim/groups.csv: the manifest's columns plus these (validate checks the label-conflict contract)
GROUPS_CONTRACT_COLUMNS = [
    "group",  # the same for every copy of one X-ray
    "label_conflict",  # the group's members carry more than one label
    "conflict_action",  # "" (no conflict), "drop", "drop_tie" or "majority": see conflict_outcome
    "resolved_label",  # the label the group enters the split with; "" when it enters none
    "readable",  # dedupe could decode the file
    "kept",  # this image enters the split (train, val or test); at most one per group
]

# ----------------------------------------------------------------------------------------------------------------------
# label conflicts: the one contract that dedupe writes, validate checks, and split and preprocess follow
#
# A label conflict is a dedupe group whose copies carry different labels. ``dedupe.conflict_policy`` decides:
#
# * ``drop`` (default): no member of the group is kept, so none is in any split: its true label is unknown, so it can
#   be neither trained nor tested on. ``conflict_action`` "drop", ``resolved_label`` "".
# * ``majority``: the group keeps exactly one member, chosen among those carrying the most frequent label, which is the
#   ``resolved_label`` of every member (``conflict_action`` "majority"). A tie is dropped as under ``drop``
#   (``conflict_action`` "drop_tie").
# * ``fail``: the dedupe stage stops and lists every conflict group (label, source and file of each member).
#
# ``kept`` means exactly "this image enters the split": the best readable member carrying the group's
# ``resolved_label`` (see dedupe), one per group, none in a dropped group. Split takes the kept rows and nothing else
# (with their label, which is the resolved one), so preprocess and training see only them. Validate checks every group
# against conflict_outcome and kept_per_group (a group none of whose files dedupe could read keeps none and fails
# there: the file changed since fetch), and split refuses input that validation did not pass.

CONFLICT_POLICIES = ("drop", "majority", "fail")
DROPPED_ACTIONS = ("drop", "drop_tie")


def conflict_outcome(labels: Iterable[str], policy: str) -> tuple[str, str]:
    """``(conflict_action, resolved_label)`` of one dedupe group whose members carry ``labels`` ("" = unlabelled,
    ignored) under ``policy``: ``("", its label)`` without a conflict, else as the contract above says."""
    if policy not in CONFLICT_POLICIES:
        raise ValueError(f"unknown conflict policy {policy!r}; expected one of {CONFLICT_POLICIES}")
    counts = Counter(label for label in labels if label)
    if len(counts) <= 1:
        return "", next(iter(counts), "")
    if policy == "majority":
        (top, n), (_, runner_up) = counts.most_common(2)
        return ("majority", top) if n > runner_up else ("drop_tie", "")
    return "drop", ""


def as_bool(column):
    """The groups table's True/False columns (``kept``, ``label_conflict``, ``readable``) as booleans, whether they
    hold bools or were read back as text: ``True``/``False``, ``true``/``false``, ``1``/``0``, ``1.0``/``0.0`` (any
    case, spaces around). Anything else, blanks included, becomes missing (``pd.NA``): the caller decides what that
    means (split stops, validate reports the rows and counts them as False). ``column`` is a pandas Series."""
    import pandas as pd

    if column.dtype == bool:
        return column
    return column.map(lambda v: _BOOL_TEXT.get(str(v).strip().lower(), pd.NA) if not pd.isna(v) else pd.NA)


_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}


def kept_per_group(conflict_action: str) -> int:
    """How many members of a group with this ``conflict_action`` enter the split: 0 when dropped, else 1."""
    return 0 if conflict_action in DROPPED_ACTIONS else 1


# dedupe -> validate -> split -> preprocess -> train
GROUPS = INTERIM / "groups.csv"
DEDUPE_REPORT = REPORTS / "dedupe.json"
DEDUPE_SHEET = REPORTS / "dedupe_contact_sheet.png"
DEDUPE_METRICS = METRICS / "dedupe.json"
DEDUPE_CACHE = CACHE_DIR / "dedupe_signatures"
VALIDATION_REPORT = REPORTS / "validation.json"
VALIDATION_DOCS = REPORTS / "validation_docs"
SPLIT = DATA / "split" / "split.csv"
# benchmark mode (split.keep_official_splits): the sources' whole official test set, copies within it included
OFFICIAL_TEST = DATA / "split" / "official_test.csv"
OFFICIAL_TEST_SPLIT = "test_official"  # its name in data/processed and in eval.json
EVAL_SPLITS = ("test", "val")  # the splits every evaluation reports (eval.json, predictions_<split>.csv)
SPLIT_METRICS = METRICS / "split.json"
SPLIT_PLOT = REPORTS / "split_counts.png"
SPLIT_REPORT = REPORTS / "split.json"
PROCESSED = DATA / "processed"
MODELS = Path("models")


TRAIN_SETTINGS = MODELS / "settings"  # train_settings -> train@<model>: <model>.json, what it depends on


def model_dir(name: str) -> Path:
    return MODELS / name


def train_settings_file(name: str) -> Path:
    return TRAIN_SETTINGS / f"{name}.json"


def model_metrics_dir(name: str) -> Path:
    return METRICS / name


def headline_file(metrics_dir: Path, split: str) -> Path:
    """evaluate@<model> -> the DVC metrics: the headline figures of one split (full evaluation: eval.json)."""
    return Path(metrics_dir) / f"headline_{split}.json"


def model_reports_dir(name: str) -> Path:
    return REPORTS / name


LEADERBOARD_MD = REPORTS / "leaderboard.md"
LEADERBOARD_PNG = REPORTS / "leaderboard.png"
LEADERBOARD_JSON = REPORTS / "leaderboard.json"
EXTERNAL_DIR = MODELS / "external"  # external (leave-one-source-out): <source>/data (the fold), <source>/<model>
EXTERNAL_MD = REPORTS / "external.md"
EXTERNAL_PNG = REPORTS / "external.png"
EXTERNAL_JSON = REPORTS / "external.json"  # written last: the leaderboard's external column reads it
EXTERNAL_PLAN = REPORTS / "external_plan.json"  # external_plan: the fold architectures and their in-source figures
PROMOTION = REPORTS / "promotion.json"
SHORTCUT_JSON = REPORTS / "shortcut.json"  # shortcut -> compare: the source probe, the label mix, the warning
SHORTCUT_MD = REPORTS / "shortcut.md"
SHORTCUT_PNG = REPORTS / "shortcut.png"
REPORT_HTML = REPORTS / "report.html"  # report: the run's self-contained HTML page (after register)

DEFAULT_MAX_PIXELS = 60_000_000  # default of fetch.max_pixels and of `lungxray dedupe --max-pixels`
