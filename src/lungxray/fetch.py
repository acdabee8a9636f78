"""The fetch stage: list every image of every source, map its label onto the taxonomy, and probe it.

``run_fetch(params)`` writes:

* ``data/interim/manifest.csv``: one row per usable image (columns in :data:`lungxray.schema.MANIFEST_COLUMNS`);
* ``data/interim/rejected.csv``: every file with an image extension that could not be used, with the reason;
* ``reports/fetch_summary.json``: counts per source and label, dropped, rejected and ignored files.

A raw label that the source's map does not cover stops the stage (naming the label, the source and an example file)
before any image is decoded. Undecodable, empty, truncated and oversized images never crash the stage; they go to the
rejected report.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import pandas as pd

from . import schema
from .config import DROP, ArchiveSource, FetchParams, FolderSource, KaggleSource, MedmnistSource
from .errors import SourceError
from .imaging import ImageRejected, open_checked
from .io import KeyValueStore, progress_bar, write_csv, write_json
from .parallel import process_pool, resolve_workers
from .sources import materialise

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


# --------------------------------------------------------------------------------------------------------------------
# probing (run in worker processes)

_MODE_DEPTH = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def _png_bit_depth(head: bytes) -> int | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 25:
        return head[24]
    return None


def probe(path: str, max_pixels: int) -> dict:
    """Read one file fully: checksum, header facts and a full decode (to catch truncation).

    Returns a dict with either the manifest facts or ``reason``/``detail`` for the rejected report (the guarded open
    of :mod:`lungxray.imaging`, shared with every other stage that decodes images).
    """
    import hashlib

    out: dict = {"path": path}
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return {**out, "reason": "unreadable_file", "detail": f"cannot read: {e}", "bytes": -1}
    out["bytes"] = len(data)
    if data:
        out["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        with open_checked(data, max_pixels) as img:
            w, h = img.size
            mode, fmt = img.mode, img.format or ""
            try:
                orientation = int(img.getexif().get(0x0112, 0) or 0)
            except Exception:
                orientation = 0
            if fmt == "JPEG":
                # DCT-domain downscaling: the whole entropy-coded stream is still read (so truncation is
                # caught) at a fraction of the cost of a full-size decode.
                img.draft(mode, (max(1, w // 8), max(1, h // 8)))
            img.load()
    except ImageRejected as e:
        return {**out, "reason": e.reason, "detail": e.detail}
    depth = _png_bit_depth(data[:32]) or _MODE_DEPTH.get(mode, 8)
    return {**out, "width": w, "height": h, "mode": mode, "bit_depth": int(depth), "format": fmt,
            "orientation": orientation}


def _probe_star(args: tuple[str, int]) -> dict:
    return probe(*args)


def probe_all(paths: list[str], max_pixels: int, workers: int = 0, progress: bool = True) -> Iterator[dict]:
    """:func:`probe` over ``paths`` in worker processes; results in order, as they come (so they can be saved)."""
    workers = resolve_workers(workers)
    jobs = [(p, max_pixels) for p in paths]
    bar = dict(total=len(jobs), desc="probe images", unit="img", disable=not progress, mininterval=1.0)
    if workers == 1 or len(jobs) < 64:
        yield from (probe(*j) for j in progress_bar(jobs, **bar))
        return
    with process_pool(workers) as pool:
        yield from progress_bar(pool.imap(_probe_star, jobs, chunksize=16), **bar)


class ProbeCache:
    """Probe results keyed by (real path, size, mtime), so a rerun only reads new or changed files.

    Each result goes to a :class:`~lungxray.io.KeyValueStore` as soon as it is known, so a rerun after an
    interruption (even ``kill -9``) probes only the files that are left.
    """

    COLUMNS = ["key", "path", "bytes", "sha256", "width", "height", "mode", "bit_depth", "format", "orientation",
               "reason", "detail"]
    VERSION = "lungxray probe cache 2"

    def __init__(self, path: Path):
        self.store = KeyValueStore(path, self.VERSION)
        self.rows: dict[str, dict] = {}
        for key, payload in self.store.items().items():
            row = json.loads(payload)
            if isinstance(row, dict) and set(row) == set(self.COLUMNS):
                self.rows[key] = row

    @staticmethod
    def key(path: str) -> str:
        st = os.stat(path)
        return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"

    def get(self, key: str) -> dict | None:
        r = self.rows.get(key)
        if r is None:
            return None
        out = {k: v for k, v in r.items() if v != "" and k != "key"}
        for k in ("bytes", "width", "height", "bit_depth", "orientation"):
            if k in out:
                out[k] = int(out[k])
        return out

    def put(self, key: str, result: dict) -> None:
        self.rows[key] = row = {"key": key, **{k: result.get(k, "") for k in self.COLUMNS[1:]}}
        self.store.put(key, json.dumps(row).encode())

    def close(self) -> None:
        self.store.close()


# --------------------------------------------------------------------------------------------------------------------


def run_fetch(params: FetchParams, progress: bool = True) -> dict:
    """Run the whole fetch stage (from the repository root). Returns the summary it also writes."""
    # 1. materialise every source and list its files; check label maps before decoding anything
    per_source: list[tuple[object, list[Candidate]]] = []
    summary_sources: dict[str, dict] = {}
    for src in params.sources:
        source_dir = materialise(src, params.download_timeout_s)
        cands, ignored, unmatched_rows = scan_source(src, source_dir, params)
        check_labels(src, cands, params.classes)
        per_source.append((src, cands))
        summary_sources[src.name] = {
            "kind": src.kind,
            "files_listed": len(cands),
            "ignored_non_image_files": dict(sorted(ignored.items())),
            "label_rows_without_image": unmatched_rows,
        }

    # 2. drop what the maps say to drop (counted), probe the rest in parallel (cached)
    keep: list[tuple[Candidate, str]] = []
    dropped: dict[str, Counter] = defaultdict(Counter)
    for src, cands in per_source:
        for c in cands:
            label = src.labels[c.raw_label]
            if label == DROP:
                dropped[src.name][c.raw_label] += 1
            else:
                keep.append((c, label))
    cache = ProbeCache(schema.CACHE_DIR / "probe_cache")
    keys = [ProbeCache.key(c.path) for c, _ in keep]
    results: list[dict | None] = [cache.get(k) for k in keys]
    todo = [i for i, r in enumerate(results) if r is None]
    fresh = probe_all([keep[i][0].path for i in todo], params.max_pixels, params.workers, progress)
    try:
        for i, r in zip(todo, fresh):
            results[i] = r
            cache.put(keys[i], r)  # saved at once: a rerun after a kill probes only what is left
    finally:
        fresh.close()
    cache.close()

    # 3. assemble the tables
    rows, rejected = [], []
    for (c, label), r in zip(keep, results):
        assert r is not None
        if "reason" in r:
            rejected.append({"source": c.source, "path": c.path, "raw_label": c.raw_label, "reason": r["reason"],
                             "detail": r.get("detail", ""), "bytes": r.get("bytes", -1)})
            continue
        rows.append({"id": f"{c.source}/{c.rel}", "source": c.source, "path": c.path, "raw_label": c.raw_label,
                     "label": label, "patient": c.patient, "official_split": c.official_split,
                     **{k: r[k] for k in ("sha256", "width", "height", "mode", "bit_depth", "format", "bytes",
                                          "orientation")}})
    manifest = pd.DataFrame(rows, columns=schema.MANIFEST_COLUMNS).sort_values("id", kind="stable")
    rejected_df = pd.DataFrame(rejected, columns=schema.REJECTED_COLUMNS).sort_values(["source", "path"])
    if manifest.empty:
        raise SourceError("no usable image in any source: see data/interim/rejected.csv for why each was rejected")

    for name, info in summary_sources.items():
        m = manifest[manifest.source == name]
        rj = rejected_df[rejected_df.source == name]
        info.update({
            "images": int(len(m)),
            "per_label": {k: int(v) for k, v in sorted(m.label.value_counts().items())},
            "per_raw_label": {k: int(v) for k, v in sorted(m.raw_label.value_counts().items())},
            "per_official_split": {k: int(v) for k, v in sorted(m.official_split.value_counts().items()) if k},
            "with_patient_id": int((m.patient != "").sum()),
            "dropped": dict(sorted(dropped[name].items())),
            "rejected": {k: int(v) for k, v in sorted(rj.reason.value_counts().items())},
        })
    summary = {
        "images": int(len(manifest)),
        "rejected": int(len(rejected_df)),
        "dropped": int(sum(sum(c.values()) for c in dropped.values())),
        "per_label": {k: int(v) for k, v in sorted(manifest.label.value_counts().items())},
        "rejected_by_reason": {k: int(v) for k, v in sorted(rejected_df.reason.value_counts().items())},
        "modes": {k: int(v) for k, v in sorted(manifest["mode"].value_counts().items())},
        "sources": summary_sources,
        "probed_now": len(todo),
        "probed_from_cache": len(keep) - len(todo),
    }
    # rejected and summary first, the manifest last: a manifest on disk means the stage finished
    write_csv(schema.REJECTED, rejected_df)
    write_json(schema.FETCH_SUMMARY, summary)
    write_json(schema.FETCH_METRICS, {k: summary[k] for k in ("images", "rejected", "dropped", "per_label")})
    write_csv(schema.MANIFEST, manifest)
    return summary


def summary_text(summary: dict) -> str:
    lines = [f"fetch: {summary['images']} images, {summary['rejected']} rejected, {summary['dropped']} dropped "
             f"(probed {summary['probed_now']}, {summary['probed_from_cache']} from cache)"]
    for name, s in summary["sources"].items():
        labels = ", ".join(f"{k} {v}" for k, v in s["per_label"].items())
        extra = []
        if s["rejected"]:
            extra.append("rejected " + ", ".join(f"{k} {v}" for k, v in s["rejected"].items()))
        if s["dropped"]:
            extra.append("dropped " + ", ".join(f"{k} {v}" for k, v in s["dropped"].items()))
        lines.append(f"  {name:<28} {s['images']:>6}  [{labels}]" + (f"  ({'; '.join(extra)})" if extra else ""))
    lines.append(f"  by class: " + ", ".join(f"{k} {v}" for k, v in summary["per_label"].items()))
    lines.append(f"  written: {schema.MANIFEST}, {schema.REJECTED}, {schema.FETCH_SUMMARY}, {schema.FETCH_METRICS}")
    return "\n".join(lines)
