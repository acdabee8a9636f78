"""Run the suites: :func:`validate_tables` adds the derived columns (file exists, id in the other table), builds every
suite and runs it on an *ephemeral* (in-memory) GX context with analytics and progress bars off, then gathers every
check and failure in a fixed order (manifest, groups, group_kept, class_counts)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungxray.core.errors import LungxrayError
from lungxray.core.schema import kept_per_group
from lungxray.data.validate.gx import import_gx
from lungxray.data.validate.params import ValidateParams
from lungxray.data.validate.report import Failure, ValidationResult, jsonable
from lungxray.data.validate.suites import (
    Suite,
    class_counts_suite,
    class_counts_table,
    group_kept_suite,
    group_kept_table,
    groups_suite,
    manifest_suite,
)

# ----------------------------------------------------------------------------------------------------------------------
# helpers


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
# running


def _examples(result: dict, n: int) -> list[Any]:
    if n <= 0:
        return []
    rows = result.get("partial_unexpected_index_list")
    if rows:
        # derived helper columns (_file_exists, _kept_ok, ...) only repeat "False": leave them out
        return [jsonable({k: v for k, v in r.items() if not str(k).startswith("_")}) for r in rows[:n]]
    vals = result.get("partial_unexpected_list")
    if vals:
        return [jsonable(v) for v in vals[:n]]
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


def _run_suites(gx, suites: list[Suite], p: ValidateParams) -> tuple[list[Failure], list[dict], list[Any]]:
    """Run each suite that has expectations on one ephemeral context; its checks and failures in a fixed order, and
    GX's raw results."""
    context = _ephemeral_context(gx)
    ds = context.data_sources.add_pandas("lungxray")
    failures: list[Failure] = []
    checks: list[dict] = []
    raw: list[Any] = []
    for s in suites:
        if not s.expectations:
            continue
        r = _run_suite(gx, context, ds, s, p)
        raw.append(r)
        _gather(r, s.table, p, checks, failures)
    order = {"manifest": 0, "groups": 1, "group_kept": 2, "class_counts": 3}
    key = lambda d: (order.get(d["table"], 9), str(d["column"]), d["expectation"], str(d["description"]))  # noqa: E731
    checks.sort(key=key)
    failures.sort(
        key=lambda f: key(
            {"table": f.table, "column": f.column, "expectation": f.expectation, "description": f.description}
        )
    )
    return failures, checks, raw


def _ephemeral_context(gx):
    """An in-memory GX context with analytics and progress bars off."""
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
    return gx.get_context(mode="ephemeral", project_config=cfg)


def _run_suite(gx, context, ds, s: Suite, p: ValidateParams):
    """GX's result of the suite ``s`` on its table (warnings silenced)."""
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
        return vd.run(batch_parameters={"dataframe": s.df}, result_format=result_format)


def _gather(r, table: str, p: ValidateParams, checks: list[dict], failures: list[Failure]) -> None:
    """Append one check per expectation of the suite result ``r`` to ``checks``, and a :class:`Failure` per failed
    (or raising) one to ``failures``."""
    for er in r.results:
        ec = er.expectation_config
        meta = ec.meta or {}
        column = meta.get("lungxray_column", ec.kwargs.get("column"))
        err = _exception_message(er)
        ok = bool(er.success) and err is None
        checks.append(
            {
                "table": table,
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
                table=table,
                expectation=ec.type,
                column=column,
                description=ec.description or ec.type,
                unexpected_count=jsonable(res.get("unexpected_count")),
                element_count=jsonable(res.get("element_count")),
                examples=_examples(res, p.max_examples),
                observed=jsonable(res.get("observed_value")),
                error=err,
            )
        )


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
    repository root); ``inputs`` (``{file: sha256}`` of the tables, :func:`lungxray.core.io.file_fingerprints`) is
    recorded in the result, so that split can tell that validation passed on the very files it reads. Nothing is raised
    for bad data: every problem is a :class:`Failure` in the result. Bad *params* (a required class outside the
    taxonomy) raise :class:`LungxrayError`.
    """
    p = params or ValidateParams()
    if not classes:
        raise LungxrayError("validate needs the list of taxonomy classes (fetch.classes); it is empty")
    gx = import_gx()
    m, g = _with_derived_columns(manifest, groups, Path(root), p)

    suites = [manifest_suite(gx, m, classes, p), groups_suite(gx, g)]
    gk = group_kept_table(g, m)
    if gk is not None:
        suites.append(group_kept_suite(gx, gk))
    cc, what = class_counts_table(m, g, classes, p)
    suites.append(class_counts_suite(gx, cc, p, what))

    failures, checks, raw = _run_suites(gx, suites, p)

    stats: dict[str, Any] = {
        "manifest_rows": int(len(manifest)),
        "groups_rows": int(len(groups)),
        "classes": list(classes),
        "required_classes": list(cc["class"]),
        "class_counts": {str(c): int(n) for c, n in zip(cc["class"], cc["n_images"])},
        "class_counts_of": what,
        **_derived_stats(m, gk),
        "params": p.model_dump(),
    }
    return ValidationResult(success=not failures, failures=failures, checks=checks, stats=stats, gx_results=raw,
                            inputs=dict(inputs or {}))


def _with_derived_columns(manifest: pd.DataFrame, groups: pd.DataFrame, root: Path,
                          p: ValidateParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Copies of the two tables with blank text as missing (as NaN) and the derived columns: ``_in_groups``,
    ``_in_manifest`` and (with ``check_files_exist``) ``_file_exists`` under ``root``."""
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
    return m, g


def _derived_stats(m: pd.DataFrame, gk: pd.DataFrame | None) -> dict[str, Any]:
    """The statistics of the groups (when their table could be built), the manifest labels and missing files."""
    stats: dict[str, Any] = {}
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
    return stats
