"""The great-expectations suites: which expectations each table gets (manifest, groups) and the small derived tables
that GX checks for what it cannot express on a row (group_kept: one row per dedupe group; class_counts: one row per
required class). Each expectation carries its table and the column a reader knows it by, for the report."""

from __future__ import annotations

from typing import Any

import pandas as pd

from lungxray.core.errors import LungxrayError
from lungxray.core.schema import (
    GROUPS_CONTRACT_COLUMNS,
    MANIFEST_COLUMNS,
    SPLITS,
    as_bool,
    conflict_outcome,
    kept_per_group,
)
from lungxray.data.validate.params import ValidateParams

GROUPS_COLUMNS = ["id", "path", "source", "label", *GROUPS_CONTRACT_COLUMNS]

_INT_TYPES = ["int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "Int64", "Int32", "Int16"]
_BOOL_TYPES = ["bool", "boolean"]
# raw_label / patient / official_split are left out: they can legitimately read as numbers ("0", "1") or all-empty
_TEXT_COLUMNS = ["id", "source", "path", "label", "sha256", "mode", "format"]
_INT_COLUMNS = ["width", "height", "bit_depth", "bytes"]


class Suite:
    """Collects expectations for one table together with our own readable metadata."""

    def __init__(self, gx, table: str, df: pd.DataFrame, index_columns: list[str]):
        self.gx = gx
        self.table = table
        self.df = df
        self.index_columns = [c for c in index_columns if c in df.columns]
        self.expectations: list[Any] = []

    def add(
        self,
        cls_name: str,
        description: str,
        column: str | None = None,
        shown_column: str | None = None,
        needs_column: bool = True,
        **kw,
    ):
        if needs_column and column is not None and column not in self.df.columns:
            return  # the column-exists check reports it; a check on a missing column would only error
        cls = getattr(self.gx.expectations, cls_name)
        if column is not None:
            kw["column"] = column
        meta = {"lungxray_table": self.table, "lungxray_column": shown_column or column}
        self.expectations.append(cls(description=description, meta=meta, **kw))


def manifest_suite(gx, m: pd.DataFrame, classes: list[str], p: ValidateParams) -> Suite:
    s = Suite(gx, "manifest", m, ["id", "path"])
    for c in MANIFEST_COLUMNS:
        s.add("ExpectColumnToExist", f"manifest has a column '{c}'", column=c, needs_column=False)
    for c in _TEXT_COLUMNS:
        # an all-empty text column reads as float NaN; the not-null checks below report that more clearly
        if c in m.columns and m[c].notna().any():
            # pandas >= 3 reads text as the "str" dtype, whose scalar type is str
            s.add("ExpectColumnValuesToBeOfType", f"'{c}' holds text", column=c, type_="str")
    for c in _INT_COLUMNS:
        s.add("ExpectColumnValuesToBeInTypeList", f"'{c}' holds integers (no blanks)", column=c, type_list=_INT_TYPES)
    for c in ["id", "source", "path", "label", "sha256", "width", "height"]:
        s.add("ExpectColumnValuesToNotBeNull", f"'{c}' is never empty", column=c)
    s.add(
        "ExpectColumnValuesToBeInSet",
        f"'label' is a class of the taxonomy {classes}",
        column="label",
        value_set=list(classes),
    )
    s.add(
        "ExpectColumnValuesToBeInSet",
        "'official_split' is train, val, test or empty",
        column="official_split",
        value_set=list(SPLITS),
    )
    s.add("ExpectColumnValuesToBeUnique", "'id' is unique (one row per image)", column="id")
    s.add("ExpectColumnValuesToBeUnique", "'path' is unique (no file listed twice)", column="path")
    for side, lo, hi in (("width", p.min_width, p.max_width), ("height", p.min_height, p.max_height)):
        if pd.api.types.is_numeric_dtype(m.get(side, pd.Series(dtype="int64"))):
            s.add("ExpectColumnValuesToBeBetween", f"{side} is between {lo} and {hi} pixels", column=side,
                  min_value=lo, max_value=hi)
    if pd.api.types.is_numeric_dtype(m.get("bytes", pd.Series(dtype="int64"))):
        s.add("ExpectColumnValuesToBeBetween", "'bytes' is positive", column="bytes", min_value=1)
    if p.check_sha256_format:
        s.add(
            "ExpectColumnValuesToMatchRegex", "'sha256' is 64 hex digits", column="sha256", regex=r"^[0-9a-f]{64}$"
        )
    if p.check_files_exist:
        s.add(
            "ExpectColumnValuesToBeInSet",
            "the file at 'path' exists",
            column="_file_exists",
            shown_column="path",
            value_set=[True],
        )
    s.add(
        "ExpectColumnValuesToBeInSet",
        "every manifest id is in the dedupe groups table",
        column="_in_groups",
        shown_column="id",
        value_set=[True],
    )
    return s


def groups_suite(gx, g: pd.DataFrame) -> Suite:
    s = Suite(gx, "groups", g, ["id", "group"])
    for c in GROUPS_COLUMNS:
        s.add("ExpectColumnToExist", f"groups table has a column '{c}'", column=c, needs_column=False)
    s.add("ExpectColumnValuesToNotBeNull", "'id' is never empty", column="id")
    s.add("ExpectColumnValuesToBeUnique", "'id' is unique (one row per manifest image)", column="id")
    s.add("ExpectColumnValuesToNotBeNull", "'group' is never empty", column="group")
    for c in ["kept", "label_conflict", "readable"]:
        s.add("ExpectColumnValuesToNotBeNull", f"'{c}' is never empty", column=c)
        s.add("ExpectColumnValuesToBeInTypeList", f"'{c}' holds booleans", column=c, type_list=_BOOL_TYPES)
    s.add(
        "ExpectColumnValuesToBeInSet",
        "dedupe could decode every image (a file changed since fetch: rerun the pipeline, dvc repro)",
        column="readable",
        value_set=[True],
    )
    s.add(
        "ExpectColumnValuesToBeInSet",
        "every groups id is in the manifest",
        column="_in_manifest",
        shown_column="id",
        value_set=[True],
    )
    return s


def _text(s: pd.Series) -> pd.Series:
    return s.astype("string").fillna("").str.strip().astype(object)


def group_kept_table(g: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame | None:
    """One row per dedupe group with what the label-conflict contract (lungxray.core.schema) says about it.

    The labels are the manifest's (split takes them from there), the groups table's where the manifest lacks an id.
    """
    need = {"id", "group", "kept", "label", "label_conflict", "conflict_action", "resolved_label"}
    if not need <= set(g.columns):
        return None
    d = pd.DataFrame(
        {
            "id": _text(g["id"]),
            "group": g["group"].astype("string"),
            "kept": as_bool(g["kept"]).fillna(False).astype(bool),
            "label": _text(g["label"]),
            "label_conflict": as_bool(g["label_conflict"]).fillna(False).astype(bool),
            "conflict_action": _text(g["conflict_action"]),
            "resolved_label": _text(g["resolved_label"]),
        }
    )
    if {"id", "label"} <= set(m.columns):
        manifest_label = dict(zip(_text(m["id"]), _text(m["label"])))
        d["label"] = [manifest_label.get(i, lab) for i, lab in zip(d["id"], d["label"])]
    d = d[d["group"].notna()]
    d["_kept_label_ok"] = ~d["kept"] | (d["label"] == d["resolved_label"])
    d["_outcome"] = d["conflict_action"] + "|" + d["resolved_label"]
    agg = (
        d.groupby("group", sort=True)
        .agg(
            n_members=("kept", "size"),
            n_kept=("kept", "sum"),
            label_conflict=("label_conflict", "any"),
            conflict_action=("conflict_action", "first"),
            resolved_label=("resolved_label", "first"),
            n_outcomes=("_outcome", "nunique"),
            _kept_label_ok=("_kept_label_ok", "all"),
            labels=("label", list),
        )
        .reset_index()
    )
    agg["group"] = agg["group"].astype(str)
    agg["n_kept"] = agg["n_kept"].astype("int64")
    agg["_kept_ok"] = agg["n_kept"] == agg["conflict_action"].map(kept_per_group)
    agg["_outcome_ok"] = [_follows_contract(*r) for r in zip(agg["labels"], agg["label_conflict"],
                                                             agg["conflict_action"], agg["resolved_label"])]
    agg["_outcome_ok"] &= agg.pop("n_outcomes") == 1
    return agg.drop(columns=["labels"])


def _follows_contract(labels: list[str], label_conflict: bool, action: str, resolved: str) -> bool:
    """Whether a group's recorded outcome is what schema.conflict_outcome gives for its labels (under the policy its
    action implies: only ``majority`` writes "majority" or "drop_tie")."""
    policy = "majority" if action in ("majority", "drop_tie") else "drop"
    expected = conflict_outcome(labels, policy)
    return (action, resolved) == expected and label_conflict == (expected[0] != "")


def group_kept_suite(gx, t: pd.DataFrame) -> Suite:
    s = Suite(gx, "group_kept", t, ["group", "n_members", "n_kept", "label_conflict", "conflict_action",
                                     "resolved_label"])
    s.add(
        "ExpectColumnValuesToBeInSet",
        "each dedupe group has exactly one kept image (none when dropped for a label conflict)",
        column="_kept_ok",
        shown_column="kept",
        value_set=[True],
    )
    s.add(
        "ExpectColumnValuesToBeInSet",
        "the kept image carries its group's resolved label",
        column="_kept_label_ok",
        shown_column="resolved_label",
        value_set=[True],
    )
    s.add(
        "ExpectColumnValuesToBeInSet",
        "label_conflict, conflict_action and resolved_label follow the label-conflict contract "
        "(lungxray.core.schema.conflict_outcome): rerun the dedupe stage",
        column="_outcome_ok",
        shown_column="conflict_action",
        value_set=[True],
    )
    return s


def class_counts_table(
    m: pd.DataFrame, g: pd.DataFrame, classes: list[str], p: ValidateParams
) -> tuple[pd.DataFrame, str]:
    required = list(p.required_classes) if p.required_classes is not None else list(classes)
    unknown = sorted(set(required) - set(classes))
    if unknown:
        raise LungxrayError(
            f"validate.required_classes names {unknown}, which are not classes of the taxonomy {list(classes)}"
        )
    labels = m["label"] if "label" in m.columns else pd.Series(dtype="string")
    what = "images"
    if p.count_kept_only and {"id", "kept"} <= set(g.columns) and "id" in m.columns:
        kept_ids = set(g.loc[as_bool(g["kept"]).fillna(False).astype(bool), "id"].astype(str))
        labels = labels[m["id"].astype(str).isin(kept_ids)]
        what = "kept images"
    counts = labels.astype("string").value_counts()
    t = pd.DataFrame({"class": required, "n_images": [int(counts.get(c, 0)) for c in required]})
    t["n_images"] = t["n_images"].astype("int64")
    return t, what


def class_counts_suite(gx, t: pd.DataFrame, p: ValidateParams, what: str) -> Suite:
    s = Suite(gx, "class_counts", t, ["class"])
    s.add(
        "ExpectColumnValuesToBeBetween",
        f"each required class has at least {p.min_per_class} {what}",
        column="n_images",
        shown_column="label",
        min_value=p.min_per_class,
    )
    return s
