"""The leakage check of a split table: which images would leak information between train, val and test.

Images are linked when they share a dedupe group or a patient, directly or through a chain of such links (also through
images that are not in the split, e.g. copies not kept by dedupe). :func:`check_leakage` lists every set of linked
images that lies in more than one split; the split stage fails unless the list is empty. The text columns of the
tables are read as :func:`clean_text` reads them (missing values as ``''``), the split stage's own reading.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from lungxray.core.errors import LungxrayError
from lungxray.core.graph import components_by_keys
from lungxray.core.schema import SPLITS

# ----------------------------------------------------------------------------------------------------------------------
# reading the tables (the split stage reads its inputs the same way)


def clean_text(s: pd.Series) -> pd.Series:
    """Strings with missing values (NaN, None, 'nan') as ''."""
    out = s.astype(object).map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip())
    out = out.where(~out.isin(["nan", "NaN", "None", "<NA>"]), "")
    return out.astype(object)


def require_columns(df: pd.DataFrame, cols: Iterable[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise LungxrayError(f"the {what} lacks the column(s) {missing}; re-run the stage that writes it")


# ----------------------------------------------------------------------------------------------------------------------
# leakage check


def _fmt_members(rows: pd.DataFrame, n: int = 4) -> str:
    items = [f"{r.id} ({r.where})" for r in rows.head(n).itertuples()]
    more = f", ... {len(rows) - n} more" if len(rows) > n else ""
    return ", ".join(items) + more


def _spanning(df: pd.DataFrame, key: str):
    """(key value, rows sorted by split and id) for every key value whose rows lie in more than one split."""
    n = df.groupby(key, sort=True)["split"].nunique()
    bad = n[n > 1].index
    sub = df[df[key].isin(bad)].sort_values([key, "split", "id"], kind="mergesort")
    for k in bad:
        yield k, sub[sub[key] == k]


def _splits_of(sub: pd.DataFrame) -> str:
    return ", ".join(s for s in SPLITS if s in set(sub["split"])) or ", ".join(sorted(set(sub["split"])))


def check_leakage(split_df: pd.DataFrame, *references: pd.DataFrame) -> list[str]:
    """Problems that would leak information between splits; an empty list means none.

    ``split_df`` is the split table (``id``, ``split`` and, if known, ``group`` / ``patient``). ``references`` are
    tables covering *all* images, kept or not (the dedupe groups table, the manifest, or both): their ``group`` and
    ``patient`` columns add the links through non-kept copies. A non-kept image takes the split of the kept images of
    its dedupe group. Reported:

    * a dedupe group whose kept images are in more than one split;
    * a patient whose images (kept, or non-kept copies of kept ones) are in more than one split;
    * images linked through a chain of shared groups and patients (e.g. via a group excluded for a label conflict)
      that are in more than one split, when not already reported above;
    * ids listed twice in ``split_df``, and split values other than train / val / test.
    """
    require_columns(split_df, ["id", "split"], "split table")
    s, problems = _split_table(split_df)
    rows = _all_rows(s, split_df, references)
    reported_ids: set[str] = set()
    problems += _group_problems(rows, reported_ids)
    problems += _patient_problems(rows, reported_ids)
    problems += _chain_problems(rows, reported_ids)
    return problems


def _split_table(split_df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``id`` and ``split`` of the split table, one row per id, and the problems of the table itself."""
    problems: list[str] = []
    s = pd.DataFrame({"id": clean_text(split_df["id"]), "split": clean_text(split_df["split"])})
    dup = sorted(set(s["id"][s["id"].duplicated()]))
    if dup:
        problems.append(f"{len(dup)} ids appear more than once in the split table, e.g. {dup[:3]}")
    bad = s[~s["split"].isin(SPLITS)]
    if len(bad):
        problems.append(
            f"{len(bad)} rows have a split other than train/val/test, e.g. {sorted(set(bad['split']))[:3]}"
        )
    return s.drop_duplicates("id", keep="first"), problems


def _all_rows(s: pd.DataFrame, split_df: pd.DataFrame, references: tuple[pd.DataFrame, ...]) -> pd.DataFrame:
    """All rows with their group / patient (first non-empty value over the references, then the split table itself)
    and their split ("" for an image not in the split table), sorted by id."""
    info: dict[str, dict[str, str]] = {}
    for t in (*references, split_df):
        if "id" not in t.columns:
            continue
        ids = clean_text(t["id"]).tolist()
        for col in ("group", "patient"):
            if col not in t.columns:
                continue
            for i, v in zip(ids, clean_text(t[col]).tolist()):
                d = info.setdefault(i, {})
                if v and not d.get(col):
                    d[col] = v
        for i in ids:
            info.setdefault(i, {})
    for i in s["id"]:
        info.setdefault(i, {})
    rows = pd.DataFrame(
        {
            "id": sorted(info),
            "group": [info[i].get("group", "") for i in sorted(info)],
            "patient": [info[i].get("patient", "") for i in sorted(info)],
        }
    )
    rows = rows.merge(s, on="id", how="left")
    rows["split"] = rows["split"].fillna("").astype(object)
    return rows


def _in_group(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows in the split table that belong to a dedupe group."""
    assigned = rows[rows["split"] != ""]
    return assigned[assigned["group"] != ""]


def _group_problems(rows: pd.DataFrame, reported_ids: set[str]) -> list[str]:
    """1. dedupe groups whose kept images are in more than one split (their ids join ``reported_ids``)."""
    problems = []
    for g, sub in _spanning(_in_group(rows), "group"):
        sub = sub.assign(where=sub["split"])
        problems.append(f"dedupe group '{g}' has kept images in {_splits_of(sub)}: {_fmt_members(sub)}")
        reported_ids.update(sub["id"])
    return problems


def _patient_problems(rows: pd.DataFrame, reported_ids: set[str]) -> list[str]:
    """2. patients in more than one split, with non-kept copies taking the split(s) of their group's kept images
    (their ids join ``reported_ids``)."""
    problems = []
    with_patient = rows[rows["patient"] != ""]
    direct = with_patient[with_patient["split"] != ""].assign(where=lambda d: d["split"])
    via = with_patient[with_patient["split"] == ""][["patient", "id", "group"]].merge(
        _in_group(rows)[["group", "split"]].drop_duplicates(), on="group", how="inner"
    )
    via = via.assign(where=via["split"] + ", via its dedupe group '" + via["group"] + "'")
    eff = pd.concat(
        [direct[["patient", "id", "split", "where"]], via[["patient", "id", "split", "where"]]], ignore_index=True
    )
    for pt, sub in _spanning(eff, "patient"):
        problems.append(f"patient '{pt}' has images in {_splits_of(sub)}: {_fmt_members(sub)}")
        reported_ids.update(sub["id"])
    return problems


def _chain_problems(rows: pd.DataFrame, reported_ids: set[str]) -> list[str]:
    """3. longer chains of shared groups and patients across splits, none of whose images was reported yet."""
    problems = []
    rows["_root"] = components_by_keys([rows["group"].tolist(), rows["patient"].tolist()])
    for _, sub in _spanning(rows[rows["split"] != ""], "_root"):
        if not (set(sub["id"]) & reported_ids):
            sub = sub.assign(where=sub["split"])
            problems.append(
                f"images linked through shared dedupe groups / patients are in {_splits_of(sub)}: {_fmt_members(sub)}"
            )
    return problems
