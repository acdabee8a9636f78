"""Stable names of the tables the stages pass along, and where they live.

Later stages read these columns by name; renaming one is a breaking change.
"""

from __future__ import annotations

from pathlib import Path

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

# dedupe -> validate -> split -> preprocess -> train
GROUPS = INTERIM / "groups.csv"
DEDUPE_REPORT = REPORTS / "dedupe.json"
DEDUPE_SHEET = REPORTS / "dedupe_contact_sheet.png"
DEDUPE_METRICS = METRICS / "dedupe.json"
DEDUPE_CACHE = CACHE_DIR / "dedupe_signatures"
VALIDATION_REPORT = REPORTS / "validation.json"
VALIDATION_DOCS = REPORTS / "validation_docs"
SPLIT = DATA / "split" / "split.csv"
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


def model_reports_dir(name: str) -> Path:
    return REPORTS / name


LEADERBOARD_MD = REPORTS / "leaderboard.md"
LEADERBOARD_PNG = REPORTS / "leaderboard.png"
LEADERBOARD_JSON = REPORTS / "leaderboard.json"
PROMOTION = REPORTS / "promotion.json"
