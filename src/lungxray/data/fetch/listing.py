"""List every image file of a source and read what its place says about it: the raw label (class folder or label
CSV), the patient id (metadata column or file-name regex, namespaced by source) and the official split (a path part
such as ``train`` / ``val`` / ``test``, see :data:`SPLIT_ALIASES`). A raw label that the source's map does not cover
stops the stage here, before any image is decoded (:func:`check_labels`)."""

from __future__ import annotations

import fnmatch
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

import pandas as pd

from lungxray.core import schema
from lungxray.core.config import DROP, ArchiveSource, FetchParams, FolderSource, KaggleSource, MedmnistSource
from lungxray.core.errors import SourceError

SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}  # fmt: skip


@dataclass(frozen=True)
class Candidate:
    source: str
    rel: str  # posix path relative to the source's root folder
    path: str  # path relative to the repository root
    raw_label: str
    patient: str
    official_split: str


# --------------------------------------------------------------------------------------------------------------------
# listing


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def list_files(root: Path, include: list[str], exclude: list[str], extensions: list[str]) -> tuple[list[str], Counter]:
    """Relative posix paths of image files under ``root`` (sorted) and a count of other files by extension."""
    exts = {e.lower() for e in extensions}
    images: list[str] = []
    ignored: Counter = Counter()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if fn.startswith("."):
                continue
            rel = Path(dirpath, fn).relative_to(root).as_posix()
            if include and not _matches(rel, include):
                continue
            if exclude and _matches(rel, exclude):
                continue
            ext = PurePosixPath(fn).suffix.lower()
            if ext in exts:
                images.append(rel)
            else:
                ignored[ext or "(no extension)"] += 1
    return sorted(images), ignored


def _patient_from_name(regex: re.Pattern | None, name: str) -> str:
    if regex is None:
        return ""
    m = regex.search(name)
    if not m:
        return ""
    return next((g for g in m.groups() if g), "")


def _official_split(setting: str | None, rel: str) -> str:
    if setting is None:
        return ""
    if setting != "from_path":
        return setting
    for part in PurePosixPath(rel).parts[:-1]:
        s = SPLIT_ALIASES.get(part.lower())
        if s:
            return s
    return ""


def _read_label_csvs(src, source_dir: Path) -> dict[str, tuple[str, str]]:
    """key (name / stem / path) -> (raw label, patient from the column). Conflicting labels are an error."""
    spec = src.csv
    table: dict[str, tuple[str, str]] = {}
    for f in spec.files:
        path = source_dir / f
        if not path.is_file():
            raise SourceError(f"source '{src.name}': label file not found: {path}")
        df = None
        for enc in [spec.encoding] if spec.encoding else ["utf-8-sig", "cp1252", "latin-1"]:
            try:
                df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=enc)
                break
            except UnicodeDecodeError:
                continue
            except Exception as e:
                raise SourceError(f"source '{src.name}': cannot read label file {path}: {e}") from None
        if df is None:
            raise SourceError(f"source '{src.name}': cannot decode label file {path} as {spec.encoding}; "
                              f"set csv.encoding in params.yaml")
        df.columns = [c.strip() for c in df.columns]
        needed = [spec.filename_column, spec.label_column] + ([spec.patient_column] if spec.patient_column else [])
        missing = [c for c in needed if c not in df.columns]
        if missing and spec.patient_column in missing and len(missing) == 1:
            needed.remove(spec.patient_column)  # the patient column is optional per file
            missing = []
        if missing:
            raise SourceError(
                f"source '{src.name}': {path} has no column(s) {missing}; its columns are {list(df.columns)}. "
                f"Set csv.filename_column / csv.label_column in params.yaml."
            )
        for _, row in df.iterrows():
            fname = row[spec.filename_column].strip()
            if not fname:
                continue
            key = {"name": PurePosixPath(fname).name, "stem": PurePosixPath(fname).stem, "path": fname}[spec.match_on]
            label = row[spec.label_column].strip() or spec.blank_label
            patient = row[spec.patient_column].strip() if spec.patient_column in row.index else ""
            if key in table and table[key][0] != label:
                raise SourceError(
                    f"source '{src.name}': '{key}' has two different labels in the label files "
                    f"('{table[key][0]}' and '{label}', the latter in {path}). Fix the CSV or list only one file."
                )
            if key not in table or (patient and not table[key][1]):
                table[key] = (label, patient)
    return table


def scan_source(src, source_dir: Path, params: FetchParams) -> tuple[list[Candidate], Counter, int]:
    """Candidates (one per image file), ignored non-image files by extension, CSV rows without an image."""
    if isinstance(src, MedmnistSource):
        layout, root_rel, include, exclude, label_level, csv, patient, split = (
            "class_folders", None, [], [], -1, None, None, "from_path")
    else:
        layout, root_rel, include, exclude, label_level, csv, patient, split = (
            src.layout, src.root, src.include, src.exclude, src.label_level, src.csv, src.patient, src.official_split)
    root = source_dir / root_rel if root_rel else source_dir
    if not root.is_dir():
        raise SourceError(f"source '{src.name}': folder '{root_rel}' not found in {source_dir.resolve()}")
    rels, ignored = list_files(root, include, exclude, params.image_extensions)
    if not rels:
        raise SourceError(_empty_source_message(src, root, include, params.image_extensions))
    regex = re.compile(patient.regex) if patient and patient.regex else None
    namespace = (patient.namespace if patient and patient.namespace else src.name)
    table = _read_label_csvs(src, source_dir) if layout == "csv" else {}
    used_keys: set[str] = set()
    prefix = f"{root_rel.strip('/')}/" if root_rel else ""
    out: list[Candidate] = []
    for rel in rels:
        p = PurePosixPath(rel)
        pid = ""
        if layout == "csv":
            key = {"name": p.name, "stem": p.stem, "path": rel}[csv.match_on]
            if key in table:
                raw, pid = table[key]
                used_keys.add(key)
            else:
                raw = csv.unlisted_label
        else:
            parents = p.parts[:-1]
            if len(parents) < -label_level:
                raise SourceError(
                    f"source '{src.name}': '{rel}' is not inside a class folder (label_level {label_level} needs "
                    f"{-label_level} folder level(s) above each image). Use one sub-folder per class, or layout: csv."
                )
            raw = parents[label_level]
        patient_id = f"{src.name}:{pid}" if pid else ""  # ids from a metadata column belong to this source
        if not patient_id:
            from_name = _patient_from_name(regex, p.name)
            patient_id = f"{namespace}:{from_name}" if from_name else ""
        out.append(
            Candidate(
                source=src.name,
                rel=prefix + rel,
                path=(schema.RAW_DIR / src.name / (prefix + rel)).as_posix(),
                raw_label=raw,
                patient=patient_id,
                official_split=_official_split(split, rel),
            )
        )
    return out, ignored, len(set(table) - used_keys)


def _configured_location(src, root_rel: str | None) -> str:
    """Where the params say the source is (not its link under data/raw/), for messages."""
    sub = f", folder '{root_rel}'" if root_rel else ""
    if isinstance(src, FolderSource):
        return f"{PurePosixPath(src.path, root_rel or '')}"
    if isinstance(src, KaggleSource):
        return f"Kaggle dataset '{src.dataset}'{sub}"
    if isinstance(src, ArchiveSource):
        return f"archive {src.url or src.path}{sub}"
    return f"MedMNIST file {src.url or src.path}"


def _empty_source_message(src, root: Path, include: list[str], extensions: list[str]) -> str:
    root_rel = None if isinstance(src, MedmnistSource) else src.root
    where = f"{_configured_location(src, root_rel)} (resolved: {root.resolve()})"
    if isinstance(src, MedmnistSource):
        expected = "the .npz holds no image"
    elif src.layout == "csv":
        expected = (f"expected the image files named in column '{src.csv.filename_column}' of {src.csv.files}, under "
                    f"'{src.root or '.'}'")
    else:
        labels = ", ".join(sorted(src.labels)) or "none mapped yet"
        expected = f"expected one sub-folder per raw label of its labels map ({labels}) holding the images"
    return (f"source '{src.name}': no image files ({', '.join(extensions)}) found in {where}"
            + (f" matching include={include}" if include else "") + f"; {expected}. Check 'path'/'root' in params.yaml.")


def check_labels(src, candidates: list[Candidate], classes: list[str]) -> None:
    """Stop on raw labels the source's map does not cover, naming each with an example file."""
    examples: dict[str, str] = {}
    for c in candidates:
        if c.raw_label not in src.labels and c.raw_label not in examples:
            examples[c.raw_label] = c.path
    if examples:
        lines = [f"  - '{raw}' (e.g. {ex})" for raw, ex in sorted(examples.items())]
        raise SourceError(
            f"source '{src.name}': {len(examples)} raw label(s) are not mapped:\n" + "\n".join(lines) + "\n"
            f"Add each to the source's 'labels' in params.yaml, mapped to a class ({', '.join(classes)}) "
            f"or to '{DROP}'. Mapped so far: {sorted(src.labels)}."
        )
