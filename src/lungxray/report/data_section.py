"""Section 2 of the report: the data (sources, rejected files, dedupe, the split and its leakage check,
preprocessing), from the fetch, dedupe, split and preprocess outputs."""

from __future__ import annotations

import json

from lungxray.core import schema
from lungxray.report.page import absent, esc, evidence, table, traced
from lungxray.report.run import Run

__all__ = ["data_section"]

MAX_LISTED = 40  # rejected files and label conflicts listed one by one (the rest counted)


def _counts(d: dict | None) -> str:
    return ", ".join(f"{esc(k)} {v}" for k, v in sorted((d or {}).items())) or "-"


def sources_part(run: Run) -> str:
    summary = run.json(schema.FETCH_SUMMARY, "fetch", "the fetch summary")
    configured = {s.get("name"): s for s in (run.params.get("fetch") or {}).get("sources") or []}
    if summary is None:
        return absent("the sources", f"{schema.FETCH_SUMMARY} is missing: `dvc repro fetch` writes it")
    src = str(schema.FETCH_SUMMARY)
    rows = []
    for name, s in sorted((summary.get("sources") or {}).items()):
        where = (configured.get(name) or {}).get("path") or (configured.get(name) or {}).get("dataset") or "-"
        rows.append([esc(name), esc(s.get("kind")), f"<code>{esc(where)}</code>",
                     traced(s.get("images"), src, ["sources", name, "images"]), _counts(s.get("per_label")),
                     _counts(s.get("rejected")), _counts(s.get("dropped"))])
    out = table(["source", "kind", "where", "images", "per class", "rejected (reason)", "dropped labels"], rows,
                caption=f"Sources as fetched ({esc(src)}; where: params.yaml fetch.sources)")
    out += (f"<p>{traced(summary.get('images'), src, ['images'])} images in, "
            f"{traced(summary.get('rejected'), src, ['rejected'])} rejected, per class: "
            f"{_counts(summary.get('per_label'))}.</p>")
    rejected = run.csv(schema.REJECTED, "fetch", "the rejected files")
    if rejected is not None and len(rejected):
        listed = [[esc(r.source), f"<code>{esc(r.path)}</code>", esc(r.reason), esc(r.detail)]
                  for r in rejected.head(MAX_LISTED).itertuples()]
        more = f" (the first {MAX_LISTED} of {len(rejected)})" if len(rejected) > MAX_LISTED else ""
        out += ("<details><summary>Rejected files" + more + "</summary>"
                + table(["source", "file", "reason", "detail"], listed, caption=esc(str(schema.REJECTED)))
                + "</details>")
    return evidence("ev-sources", out)


def dedupe_part(run: Run) -> str:
    d = run.json(schema.DEDUPE_REPORT, "dedupe", "the dedupe report")
    if d is None:
        return absent("the dedupe figures", f"{schema.DEDUPE_REPORT} is missing: `dvc repro dedupe` writes it")
    src = str(schema.DEDUPE_REPORT)
    policy = (d.get("params") or {}).get("conflict_policy", "drop")
    out = (f"<p>{traced(d.get('images_in'), src, ['images_in'])} images form "
           f"{traced(d.get('groups'), src, ['groups'])} distinct X-rays: "
           f"{traced(d.get('duplicate_groups'), src, ['duplicate_groups'])} groups hold copies "
           f"({traced(d.get('duplicates_removed'), src, ['duplicates_removed'])} copies removed, largest group "
           f"{traced(d.get('largest_group'), src, ['largest_group'])}); "
           f"{traced(d.get('n_label_conflicts'), src, ['n_label_conflicts'])} label conflicts, handled by the "
           f"policy <code>{esc(policy)}</code> "
           f"({traced(d.get('images_dropped_for_label_conflicts'), src, ['images_dropped_for_label_conflicts'])} "
           f"images dropped).</p>")
    pairs = d.get("per_source_pair") or {}
    if pairs:
        out += table(["sources", "copy pairs", "groups"],
                     [[esc(k), traced(v.get("pairs"), src, ["per_source_pair", k, "pairs"]),
                       traced(v.get("groups"), src, ["per_source_pair", k, "groups"])] for k, v in pairs.items()],
                     caption=f"Copies within and across sources ({esc(src)})")
    conflicts = d.get("label_conflicts") or []
    if conflicts:
        rows = [[esc(c.get("group")), esc(json.dumps({k: v for k, v in c.items() if k != "group"}, default=str))]
                for c in conflicts[:MAX_LISTED]]
        out += ("<details><summary>Label conflicts</summary>"
                + table(["group", "members, labels and action"], rows, caption=esc(src)) + "</details>")
    out = evidence("ev-dedupe", out)
    out += run.figure(schema.DEDUPE_SHEET, "dedupe contact sheet", "Sample duplicate groups and the label conflicts "
                  "(thumbnails)")
    return out


def split_part(run: Run) -> str:
    s = run.json(schema.SPLIT_REPORT, "split", "the split report")
    if s is None:
        return absent("the split figures", f"{schema.SPLIT_REPORT} is missing: `dvc repro split` writes it")
    src = str(schema.SPLIT_REPORT)
    counts = s.get("counts") or {}
    classes = [c for c in run.classes if any(c in (counts.get(sp) or {}) for sp in schema.SPLITS)]
    rows = [[esc(sp)] + [traced((counts.get(sp) or {}).get(c), src, ["counts", sp, c]) for c in classes]
            + [traced((counts.get(sp) or {}).get("total"), src, ["counts", sp, "total"])] for sp in schema.SPLITS]
    out = (f"<p>{traced(s.get('images'), src, ['images'])} images in {traced(s.get('units'), src, ['units'])} split "
           f"units (a unit is a patient joined with every copy of its X-rays: no unit spans two splits); "
           f"{traced(s.get('patients'), src, ['patients'])} known patients.</p>")
    out += table(["split"] + classes + ["total"], rows, caption=f"Images per split and class ({esc(src)})")
    split = run.csv(schema.SPLIT, "split", "the split table")
    if split is not None and len(split):
        by = split.groupby(["source", "split"]).size().unstack(fill_value=0)
        cols = [c for c in schema.SPLITS if c in by.columns]
        out += table(["source"] + cols, [[esc(i)] + [str(int(r[c])) for c in cols] for i, r in by.iterrows()],
                     caption=f"Images per source and split ({esc(str(schema.SPLIT))})")
    n = s.get("n_leakage_problems", len(s.get("leakage") or []))
    verdict = '<span class="ok">passed</span>' if n == 0 else '<span class="no">FAILED</span>'
    out = evidence("ev-split", out) + evidence("ev-leakage", (
        f"<p>Leakage check: {verdict}: {traced(n, src, ['n_leakage_problems'])} unit, patient or copy shared by two "
        f"splits.</p>"))
    return out + run.figure(schema.SPLIT_PLOT, "split counts", "Images per split and class", "70%")


def preprocess_part(run: Run) -> str:
    params = run.params.get("preprocess")
    stats_file = schema.PROCESSED / "stats.json"
    stats = run.json(stats_file, "preprocess", "the preprocessing statistics") if run.path(stats_file).is_file() \
        else None
    out = ""
    if params:
        out += table(["setting", "value"], [[esc(k), f"<code>{esc(json.dumps(v))}</code>"] for k, v in params.items()],
                     caption="params.yaml preprocess")
    if stats:
        keep = {k: v for k, v in stats.items() if not isinstance(v, (list, dict)) or k in ("mean", "std", "classes")}
        out += table(["statistic", "value"], [[esc(k), f"<code>{esc(json.dumps(v))}</code>"] for k, v in keep.items()],
                     caption=esc(str(stats_file)))
    if not out:
        return absent("the preprocessing", "neither params.yaml preprocess nor data/processed/stats.json is here")
    return evidence("ev-preprocess", out)


def data_section(run: Run) -> str:
    return ("<h3>Sources</h3>" + sources_part(run) + "<h3>Duplicates and label conflicts</h3>" + dedupe_part(run)
            + "<h3>The split</h3>" + split_part(run) + "<h3>Preprocessing</h3>" + preprocess_part(run))
