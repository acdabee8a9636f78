"""Data validation of the manifest and the dedupe groups table with great-expectations (GX 1.x).

The suite runs on an *ephemeral* (in-memory) GX context with analytics switched off, so it needs no project folder and
never touches the network. Checks that GX cannot express on a row directly (does the file exist, how many images per
class, how many kept images per dedupe group, is every manifest id in the groups table) are computed with pandas into
derived columns / small derived tables first, and GX then checks those.

Checks (table: what):

* manifest: every column of :data:`lungxray.schema.MANIFEST_COLUMNS` exists; text / integer columns have the right
  type; ``id``, ``source``, ``path``, ``label``, ``sha256``, ``width``, ``height`` are never empty; ``label`` is a
  class of the taxonomy; ``official_split`` is train / val / test (or empty); ``id`` and ``path`` are unique;
  ``width`` / ``height`` lie within the bounds of :class:`ValidateParams`; ``sha256`` is 64 hex digits; ``bytes`` > 0;
  every file exists under ``root`` (optional); every id is in the groups table.
* groups: the columns ``id, path, source, label`` and :data:`lungxray.schema.GROUPS_CONTRACT_COLUMNS` exist; ``id``
  unique and not empty; ``group`` not empty; ``kept`` / ``label_conflict`` / ``readable`` are booleans; dedupe could
  read every image; every id is in the manifest.
* group_kept (derived, one row per dedupe group): the label-conflict contract of :mod:`lungxray.schema`: exactly one
  kept image, none when the group was dropped for a label conflict; the kept image carries the group's resolved label
  (the manifest's label, which split uses); ``label_conflict``, ``conflict_action`` and ``resolved_label`` are what
  :func:`lungxray.schema.conflict_outcome` gives for the group's labels.
* class_counts (derived, one row per required class): at least ``min_per_class`` images.

``required_classes`` defaults to **every class of the taxonomy** (the ``classes`` argument), not only those that
appear: a declared class without images would silently give a classifier a class it never sees, so it fails unless
``min_per_class`` is 0 or ``required_classes`` leaves it out. Class counts are taken over the *kept* (deduplicated)
images by default (``count_kept_only``), because those are what the model trains and is tested on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from .config import Strict
from .errors import LungxrayError
from .schema import GROUPS_CONTRACT_COLUMNS, MANIFEST_COLUMNS, SPLITS, as_bool, conflict_outcome, kept_per_group
from .stage import disable_telemetry

log = logging.getLogger(__name__)

GROUPS_COLUMNS = ["id", "path", "source", "label", *GROUPS_CONTRACT_COLUMNS]
MAX_EXAMPLES = 5

_INT_TYPES = ["int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "Int64", "Int32", "Int16"]
_BOOL_TYPES = ["bool", "boolean"]
# raw_label / patient / official_split are left out: they can legitimately read as numbers ("0", "1") or all-empty
_TEXT_COLUMNS = ["id", "source", "path", "label", "sha256", "mode", "format"]
_INT_COLUMNS = ["width", "height", "bit_depth", "bytes"]


class ValidateParams(Strict):
    """Parameters of the validation stage (``validate`` section of params.yaml)."""

    min_width: int = Field(32, ge=1, description="smallest accepted image width in pixels")
    max_width: int = Field(20000, ge=1, description="largest accepted image width in pixels")
    min_height: int = Field(32, ge=1, description="smallest accepted image height in pixels")
    max_height: int = Field(20000, ge=1, description="largest accepted image height in pixels")
    min_per_class: int = Field(1, ge=0, description="fewest images each required class must have")
    required_classes: list[str] | None = Field(
        None, description="classes that must reach min_per_class; None = every class of the taxonomy"
    )
    count_kept_only: bool = Field(True, description="count only kept (deduplicated) images towards min_per_class")
    check_files_exist: bool = Field(True, description="check that every manifest path exists under the repo root")
    check_sha256_format: bool = Field(True, description="check that sha256 is 64 lower-case hex digits")
    max_examples: int = Field(MAX_EXAMPLES, ge=0, le=100, description="example rows kept per failed check")

    @model_validator(mode="after")
    def _bounds(self) -> "ValidateParams":
        if self.min_width > self.max_width:
            raise ValueError(f"min_width ({self.min_width}) is larger than max_width ({self.max_width})")
        if self.min_height > self.max_height:
            raise ValueError(f"min_height ({self.min_height}) is larger than max_height ({self.max_height})")
        return self


@dataclass
class Failure:
    """One failed check."""

    table: str
    expectation: str  # GX expectation type, e.g. expect_column_values_to_be_unique
    column: str | None
    description: str  # what the check wants, in words
    unexpected_count: int | None = None
    element_count: int | None = None
    examples: list[Any] = field(default_factory=list)  # up to max_examples rows (dicts) or values
    observed: Any = None  # observed value for table-level checks
    error: str | None = None  # set when GX could not evaluate the check at all

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "table": self.table,
                "expectation": self.expectation,
                "column": self.column,
                "description": self.description,
                "unexpected_count": self.unexpected_count,
                "element_count": self.element_count,
                "examples": self.examples,
                "observed": self.observed,
                "error": self.error,
            }
        )

    def summary(self) -> str:
        """One readable line: what is wrong and where."""
        head = f"[{self.table}] {self.description}"
        if self.error:
            return f"{head}: could not be checked ({self.error})"
        parts = []
        if self.unexpected_count is not None:
            of = f" of {self.element_count}" if self.element_count is not None else ""
            parts.append(f"{self.unexpected_count}{of} rows fail")
        elif self.observed is not None:
            parts.append(f"observed {_short(self.observed)}")
        return f"{head}: " + ", ".join(parts) if parts else f"{head}: not met"


@dataclass
class ValidationResult:
    """Outcome of :func:`validate_tables`."""

    success: bool
    failures: list[Failure]
    checks: list[dict[str, Any]]  # every check: table, expectation, column, description, success
    stats: dict[str, Any]  # row counts, class counts, ... for the report
    gx_results: list[Any] = field(default_factory=list, repr=False)  # raw GX ExpectationSuiteValidationResult objects
    inputs: dict[str, str] = field(default_factory=dict)  # {file: sha256} of the validated tables (split checks it)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "success": self.success,
                "n_checks": len(self.checks),
                "n_failed": len(self.failures),
                "failures": [f.to_dict() for f in self.failures],
                "checks": self.checks,
                "stats": self.stats,
                "inputs": self.inputs,
            }
        )


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _gx():
    disable_telemetry()  # before great_expectations is imported (lazily here: the import takes a few seconds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import great_expectations as gx
    return gx


def _jsonable(obj: Any) -> Any:
    """Convert numpy / pandas scalars and NaN to plain JSON values (recursively)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _short(v: Any, n: int = 120) -> str:
    s = json.dumps(_jsonable(v), sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def _blank_to_na(df: pd.DataFrame) -> pd.DataFrame:
    """A copy in which blank strings of text columns are missing values; all-blank columns become float NaN columns,
    as pandas reads them by default."""
    out = df.copy()
    for c in out.columns:
        s = out[c]
        if pd.api.types.is_string_dtype(s.dtype) or s.dtype == object:
            blank = s.map(lambda v: isinstance(v, str) and v.strip() == "").astype(bool)
            if blank.any():
                s = s.where(~blank, np.nan)
                out[c] = np.nan if blank.all() else s
    return out


# ----------------------------------------------------------------------------------------------------------------------
# suite construction


class _Suite:
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


def _manifest_suite(gx, m: pd.DataFrame, classes: list[str], p: ValidateParams) -> _Suite:
    s = _Suite(gx, "manifest", m, ["id", "path"])
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
    if pd.api.types.is_numeric_dtype(m.get("width", pd.Series(dtype="int64"))):
        s.add(
            "ExpectColumnValuesToBeBetween",
            f"width is between {p.min_width} and {p.max_width} pixels",
            column="width",
            min_value=p.min_width,
            max_value=p.max_width,
        )
    if pd.api.types.is_numeric_dtype(m.get("height", pd.Series(dtype="int64"))):
        s.add(
            "ExpectColumnValuesToBeBetween",
            f"height is between {p.min_height} and {p.max_height} pixels",
            column="height",
            min_value=p.min_height,
            max_value=p.max_height,
        )
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


def _groups_suite(gx, g: pd.DataFrame) -> _Suite:
    s = _Suite(gx, "groups", g, ["id", "group"])
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


def _group_kept_table(g: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame | None:
    """One row per dedupe group with what the label-conflict contract (lungxray.schema) says about it.

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


def _group_kept_suite(gx, t: pd.DataFrame) -> _Suite:
    s = _Suite(gx, "group_kept", t, ["group", "n_members", "n_kept", "label_conflict", "conflict_action",
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
        "(lungxray.schema.conflict_outcome): rerun the dedupe stage",
        column="_outcome_ok",
        shown_column="conflict_action",
        value_set=[True],
    )
    return s


def _class_counts_table(
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


def _class_counts_suite(gx, t: pd.DataFrame, p: ValidateParams, what: str) -> _Suite:
    s = _Suite(gx, "class_counts", t, ["class"])
    s.add(
        "ExpectColumnValuesToBeBetween",
        f"each required class has at least {p.min_per_class} {what}",
        column="n_images",
        shown_column="label",
        min_value=p.min_per_class,
    )
    return s


# ----------------------------------------------------------------------------------------------------------------------
# running


def _examples(result: dict, n: int) -> list[Any]:
    if n <= 0:
        return []
    rows = result.get("partial_unexpected_index_list")
    if rows:
        # derived helper columns (_file_exists, _kept_ok, ...) only repeat "False": leave them out
        return [_jsonable({k: v for k, v in r.items() if not str(k).startswith("_")}) for r in rows[:n]]
    vals = result.get("partial_unexpected_list")
    if vals:
        return [_jsonable(v) for v in vals[:n]]
    return []


def _exception_message(er) -> str | None:
    info = er.exception_info or {}
    if "raised_exception" in info:
        infos = [info]
    else:
        infos = [v for v in info.values() if isinstance(v, dict)]
    for i in infos:
        if i.get("raised_exception"):
            return str(i.get("exception_message") or "error")
    return None


def _run_suites(gx, suites: list[_Suite], p: ValidateParams) -> tuple[list[Failure], list[dict], list[Any]]:
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    cfg = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=cfg)
    ds = context.data_sources.add_pandas("lungxray")
    failures: list[Failure] = []
    checks: list[dict] = []
    raw: list[Any] = []
    order = {"manifest": 0, "groups": 1, "group_kept": 2, "class_counts": 3}
    for s in suites:
        if not s.expectations:
            continue
        asset = ds.add_dataframe_asset(s.table)
        bd = asset.add_batch_definition_whole_dataframe(f"{s.table}_all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"lungxray_{s.table}", expectations=s.expectations))
        vd = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{s.table}", data=bd, suite=suite)
        )
        result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": max(p.max_examples, 1)}
        if s.index_columns:
            result_format["unexpected_index_column_names"] = s.index_columns
            result_format["return_unexpected_index_query"] = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = vd.run(batch_parameters={"dataframe": s.df}, result_format=result_format)
        raw.append(r)
        for er in r.results:
            ec = er.expectation_config
            meta = ec.meta or {}
            column = meta.get("lungxray_column", ec.kwargs.get("column"))
            err = _exception_message(er)
            ok = bool(er.success) and err is None
            checks.append(
                {
                    "table": s.table,
                    "expectation": ec.type,
                    "column": column,
                    "description": ec.description,
                    "success": ok,
                }
            )
            if ok:
                continue
            res = er.result or {}
            failures.append(
                Failure(
                    table=s.table,
                    expectation=ec.type,
                    column=column,
                    description=ec.description or ec.type,
                    unexpected_count=_jsonable(res.get("unexpected_count")),
                    element_count=_jsonable(res.get("element_count")),
                    examples=_examples(res, p.max_examples),
                    observed=_jsonable(res.get("observed_value")),
                    error=err,
                )
            )
    key = lambda d: (order.get(d["table"], 9), str(d["column"]), d["expectation"], str(d["description"]))  # noqa: E731
    checks.sort(key=key)
    failures.sort(
        key=lambda f: key(
            {"table": f.table, "column": f.column, "expectation": f.expectation, "description": f.description}
        )
    )
    return failures, checks, raw


def validate_tables(
    manifest: pd.DataFrame,
    groups: pd.DataFrame,
    classes: list[str],
    params: ValidateParams | None = None,
    root: Path = Path("."),
    inputs: dict[str, str] | None = None,
) -> ValidationResult:
    """Run the GX suite over the manifest and the dedupe groups table.

    ``classes`` is the taxonomy (``fetch.classes``); ``root`` is the folder manifest paths are relative to (the
    repository root); ``inputs`` (``{file: sha256}`` of the tables, :func:`lungxray.io.file_fingerprints`) is recorded
    in the result, so that split can tell that validation passed on the very files it reads. Nothing is raised for bad
    data: every problem is a :class:`Failure` in the result. Bad *params* (a required class outside the taxonomy) raise
    :class:`LungxrayError`.
    """
    p = params or ValidateParams()
    if not classes:
        raise LungxrayError("validate needs the list of taxonomy classes (fetch.classes); it is empty")
    gx = _gx()
    root = Path(root)

    # blank text ("" or whitespace, as read with keep_default_na=False) counts as missing, like NaN
    m = _blank_to_na(manifest)
    g = _blank_to_na(groups)
    group_ids = set(g["id"].dropna().astype(str)) if "id" in g.columns else set()
    manifest_ids = set(m["id"].dropna().astype(str)) if "id" in m.columns else set()
    if "id" in m.columns:
        m["_in_groups"] = m["id"].map(lambda v: (not pd.isna(v)) and str(v) in group_ids).astype(bool)
    if "id" in g.columns:
        g["_in_manifest"] = g["id"].map(lambda v: (not pd.isna(v)) and str(v) in manifest_ids).astype(bool)
    if p.check_files_exist and "path" in m.columns:
        m["_file_exists"] = m["path"].map(lambda v: (not pd.isna(v)) and str(v) != "" and (root / str(v)).is_file())
        m["_file_exists"] = m["_file_exists"].astype(bool)

    suites = [_manifest_suite(gx, m, classes, p), _groups_suite(gx, g)]
    gk = _group_kept_table(g, m)
    if gk is not None:
        suites.append(_group_kept_suite(gx, gk))
    cc, what = _class_counts_table(m, g, classes, p)
    suites.append(_class_counts_suite(gx, cc, p, what))

    failures, checks, raw = _run_suites(gx, suites, p)

    stats: dict[str, Any] = {
        "manifest_rows": int(len(manifest)),
        "groups_rows": int(len(groups)),
        "classes": list(classes),
        "required_classes": list(cc["class"]),
        "class_counts": {str(c): int(n) for c, n in zip(cc["class"], cc["n_images"])},
        "class_counts_of": what,
    }
    if gk is not None:
        stats["groups"] = int(len(gk))
        stats["groups_label_conflict"] = int(gk["label_conflict"].sum())
        stats["groups_dropped_for_label_conflicts"] = int((gk["conflict_action"].map(kept_per_group) == 0).sum())
        stats["kept"] = int(gk["n_kept"].sum())
    if "label" in m.columns:
        vc = m["label"].astype("string").value_counts().sort_index()
        stats["manifest_label_counts"] = {str(k): int(v) for k, v in vc.items()}
    if "_file_exists" in m.columns:
        stats["missing_files"] = int((~m["_file_exists"]).sum())
    stats["params"] = p.model_dump()
    return ValidationResult(success=not failures, failures=failures, checks=checks, stats=stats, gx_results=raw,
                            inputs=dict(inputs or {}))


def format_failures(result: ValidationResult, max_examples: int = MAX_EXAMPLES) -> str:
    """A readable multi-line list of what failed, for the terminal."""
    n = len(result.checks)
    if result.success:
        return f"data validation passed: {n} checks"
    lines = [f"data validation FAILED: {len(result.failures)} of {n} checks"]
    for i, f in enumerate(result.failures, 1):
        lines.append(f"{i:>3}. {f.summary()}")
        for ex in f.examples[:max_examples]:
            if isinstance(ex, dict):
                lines.append("       - " + ", ".join(f"{k}={_short(v, 100)}" for k, v in ex.items()))
            else:
                lines.append(f"       - {_short(ex, 100)}")
        if f.unexpected_count is not None and f.unexpected_count > min(len(f.examples), max_examples) > 0:
            lines.append(f"       ... and {f.unexpected_count - min(len(f.examples), max_examples)} more")
    return "\n".join(lines)


def write_report(
    result: ValidationResult, json_path: str | os.PathLike, docs_dir: str | os.PathLike | None = None
) -> None:
    """Write the JSON summary (always) and, best effort, one GX data-docs HTML page per table into ``docs_dir``.

    The HTML pages reference CSS/JS on a CDN (they still render readably offline, without styling). Failing to render
    them only logs a warning: the JSON is the stage's output.
    """
    from .io import atomic_path, write_json

    write_json(json_path, result.to_dict())
    if docs_dir is None:
        return
    docs = Path(docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    try:
        _gx()
        from great_expectations.render.renderer import ValidationResultsPageRenderer
        from great_expectations.render.view import DefaultJinjaPageView

        renderer = ValidationResultsPageRenderer()
        view = DefaultJinjaPageView()
        for r in result.gx_results:
            name = str(getattr(r, "suite_name", None) or "validation")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                html = view.render(renderer.render(r))
            with atomic_path(docs / f"{name}.html") as tmp:
                tmp.write_text(html, encoding="utf-8")
    except Exception as e:  # noqa: BLE001 - data docs are a nice-to-have
        log.warning("could not render GX data docs into %s: %s", docs, e)
