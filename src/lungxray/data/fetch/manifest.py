"""Run the fetch stage in order: materialise and list every source (checking its label map), drop what the maps say
to drop, probe the rest (cached), then assemble the manifest, the rejected list and the summary, and write them (the
manifest last: its presence means the stage finished)."""

from __future__ import annotations

from collections import Counter, defaultdict

import pandas as pd

from lungxray.core import schema
from lungxray.core.config import DROP, FetchParams
from lungxray.core.errors import SourceError
from lungxray.core.io import write_csv, write_json
from lungxray.data.fetch.listing import Candidate, check_labels, scan_source
from lungxray.data.fetch.probing import ProbeCache, probe_all
from lungxray.data.fetch.sources import materialise


def run_fetch(params: FetchParams, progress: bool = True) -> dict:
    """Run the whole fetch stage (from the repository root). Returns the summary it also writes."""
    per_source, summary_sources = _list_sources(params)
    keep, dropped = _apply_label_maps(per_source)
    results, probed_now = _probe_cached(keep, params, progress)
    manifest, rejected_df = _tables(keep, results)
    summary = _summary(manifest, rejected_df, summary_sources, dropped, probed_now, len(keep) - probed_now)
    # rejected and summary first, the manifest last: a manifest on disk means the stage finished
    write_csv(schema.REJECTED, rejected_df)
    write_json(schema.FETCH_SUMMARY, summary)
    write_json(schema.FETCH_METRICS, {k: summary[k] for k in ("images", "rejected", "dropped", "per_label")})
    write_csv(schema.MANIFEST, manifest)
    return summary


def _list_sources(params: FetchParams) -> tuple[list[tuple[object, list[Candidate]]], dict[str, dict]]:
    """1. Materialise every source and list its files; check label maps before decoding anything."""
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
    return per_source, summary_sources


def _apply_label_maps(per_source: list[tuple[object, list[Candidate]]]
                      ) -> tuple[list[tuple[Candidate, str]], dict[str, Counter]]:
    """2a. Each file with its label, but those the maps say to drop (counted per source and raw label)."""
    keep: list[tuple[Candidate, str]] = []
    dropped: dict[str, Counter] = defaultdict(Counter)
    for src, cands in per_source:
        for c in cands:
            label = src.labels[c.raw_label]
            if label == DROP:
                dropped[src.name][c.raw_label] += 1
            else:
                keep.append((c, label))
    return keep, dropped


def _probe_cached(keep: list[tuple[Candidate, str]], params: FetchParams,
                  progress: bool) -> tuple[list[dict | None], int]:
    """2b. Probe the files in parallel, those in the probe cache from it; also how many were probed now."""
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
    return results, len(todo)


def _tables(keep: list[tuple[Candidate, str]], results: list[dict | None]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """3. The manifest and the rejected table."""
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
    return manifest, rejected_df


def _summary(manifest: pd.DataFrame, rejected_df: pd.DataFrame, summary_sources: dict[str, dict],
             dropped: dict[str, Counter], probed_now: int, probed_from_cache: int) -> dict:
    """4. The summary: the totals, and per source what :func:`_list_sources` found completed with its counts."""
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
    return {
        "images": int(len(manifest)),
        "rejected": int(len(rejected_df)),
        "dropped": int(sum(sum(c.values()) for c in dropped.values())),
        "per_label": {k: int(v) for k, v in sorted(manifest.label.value_counts().items())},
        "rejected_by_reason": {k: int(v) for k, v in sorted(rejected_df.reason.value_counts().items())},
        "modes": {k: int(v) for k, v in sorted(manifest["mode"].value_counts().items())},
        "sources": summary_sources,
        "probed_now": probed_now,
        "probed_from_cache": probed_from_cache,
    }


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
