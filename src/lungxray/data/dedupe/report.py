"""What the dedupe tells a person: the report (a dict, written as ``reports/dedupe.json``), its summary lines and the
contact sheet of sample duplicate groups and every label conflict."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from lungxray.core.plots import pyplot
from lungxray.core.schema import kept_per_group
from lungxray.data.dedupe.params import DedupeParams
from lungxray.data.dedupe.signatures import Signatures
from lungxray.images.decode import open_grey


def build_report(out: pd.DataFrame, sig: Signatures, params: DedupeParams, conflicts: list, extra: dict) -> dict:
    """The report of a :func:`~lungxray.data.dedupe.find_groups` run: counts per source and per pair of sources, label
    conflicts, unreadable files, then ``extra`` (candidate and verified pair counts, timings, cache use) and the
    params."""
    dup = out[out["group_size"] > 1]
    dropped = out["conflict_action"].map(kept_per_group).eq(0)
    per_source = {}
    for s, g in out.groupby("source", sort=True):
        per_source[str(s)] = {"images": int(len(g)), "kept": int(g["kept"].sum()),
                              "in_duplicate_groups": int((g["group_size"] > 1).sum()),
                              "removed": int((~g["kept"]).sum()),
                              "dropped_for_label_conflicts": int(dropped[g.index].sum())}
    pair_counts: dict[str, dict[str, int]] = {}
    for _, g in dup.groupby("group", sort=True):
        srcs = g["source"].astype(str).tolist()
        seen = set()
        for a, b in itertools.combinations(range(len(srcs)), 2):
            key = "|".join(sorted((srcs[a], srcs[b])))
            e = pair_counts.setdefault(key, {"pairs": 0, "groups": 0})
            e["pairs"] += 1
            if key not in seen:
                e["groups"] += 1
                seen.add(key)
    methods = out.loc[out["match_method"] != "", "match_method"].value_counts()
    unreadable = [{"id": str(r.id), "path": str(r.path), "error": sig.errors[i]}
                  for i, r in enumerate(out.itertuples()) if not sig.ok[i]]
    return {
        "images_in": int(len(out)),
        "groups": int(out["group"].nunique()),
        "duplicate_groups": int(dup["group"].nunique()),
        "images_in_duplicate_groups": int(len(dup)),
        "duplicates_removed": int(len(out) - out["group"].nunique()),
        "largest_group": int(out["group_size"].max()) if len(out) else 0,
        "kept": int(out["kept"].sum()),
        "images_dropped_for_label_conflicts": int(dropped.sum()),
        "match_methods": {str(k): int(v) for k, v in methods.items()},
        "per_source": per_source,
        "per_source_pair": dict(sorted(pair_counts.items())),
        "label_conflicts": conflicts,
        "n_label_conflicts": len(conflicts),
        "unreadable": unreadable,
        **extra,
        "params": json.loads(params.model_dump_json()),
    }


def summary_text(report: dict) -> str:
    """A few human-readable lines about a :func:`find_groups` report."""
    lines = [f"{report['images_in']} images -> {report['groups']} distinct X-rays "
             f"({report['duplicate_groups']} duplicate groups, {report['duplicates_removed']} duplicates removed, "
             f"largest group {report['largest_group']})",
             f"candidates {report.get('candidate_pairs', 0)}, verified {report.get('verified_pairs', 0)}; "
             f"label conflicts: {report['n_label_conflicts']}; unreadable: {len(report['unreadable'])}"]
    for s, c in report["per_source"].items():
        lines.append(f"  {s}: {c['images']} images, {c['in_duplicate_groups']} in duplicate groups, "
                     f"{c['kept']} kept, {c['dropped_for_label_conflicts']} dropped for label conflicts")
    for k, v in report["per_source_pair"].items():
        lines.append(f"  {k}: {v['groups']} groups, {v['pairs']} pairs")
    for c in report["label_conflicts"][:20]:
        outcome = f"kept {c['kept']} as {c['resolved_label']}" if c.get("kept") else "no member kept"
        lines.append(f"  conflict {c['group']} {c['labels']} -> {c['action']}: {outcome}")
    return "\n".join(lines)


def contact_sheet(groups_df: pd.DataFrame, report: dict, out_png: str, max_groups: int = 24,
                  max_members: int = 6, max_conflicts: int = 200, seed: int = 0) -> str:
    """PNG with ``max_groups`` sample duplicate groups (seeded) and every label conflict (up to ``max_conflicts``)."""
    plt = pyplot()

    outcome = {c["group"]: (f"majority: {c['resolved_label']}" if c.get("kept") else f"{c['action']}: none kept")
               for c in report.get("label_conflicts", [])}
    conflict_ids = list(outcome)[:max_conflicts]
    dup_ids = sorted(set(groups_df.loc[groups_df["group_size"] > 1, "group"]) - set(conflict_ids))
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(dup_ids, size=min(max_groups, len(dup_ids)), replace=False).tolist()) if dup_ids else []
    rows = [(g, True) for g in conflict_ids] + [(g, False) for g in sample]
    n_rows = max(1, len(rows))
    fig, axes = plt.subplots(n_rows, max_members, figsize=(2.2 * max_members, 2.5 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (gid, is_conflict) in enumerate(rows):
        g = groups_df[groups_df["group"] == gid].sort_values(["kept", "id"], ascending=[False, True])
        for c, m in enumerate(g.head(max_members).itertuples()):
            ax = axes[r, c]
            try:
                im, _ = open_grey(str(m.path), draft_size=160)
                im.thumbnail((160, 160))
                ax.imshow(np.asarray(im), cmap="gray", vmin=0, vmax=255)
            except Exception:  # noqa: BLE001
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
            sim = "" if pd.isna(m.similarity) else f" s={m.similarity:.2f}"
            ax.set_title(f"{m.source}\n{m.label} {m.width}x{m.height}{sim}{' *kept' if m.kept else ''}",
                         fontsize=7, color="red" if is_conflict else "black")
        head = f"{gid} CONFLICT\n{outcome[gid]}" if is_conflict else gid
        axes[r, 0].text(-0.05, 0.5, f"{head}\n({len(g)} images)",
                        transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center", fontsize=7,
                        color="red" if is_conflict else "black")
    top = 1 - 0.5 / fig.get_figheight()  # a band of half an inch for the title, whatever the number of rows
    fig.suptitle(f"{len(conflict_ids)} label conflicts (red, with what was done) + {len(sample)} of {len(dup_ids)} "
                 "other duplicate groups", fontsize=10, y=1 - 0.2 / fig.get_figheight())
    fig.tight_layout(rect=(0, 0, 1, top))
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png
