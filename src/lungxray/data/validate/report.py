"""What validation found and how it is reported: :class:`Failure` (one failed check, with example rows),
:class:`ValidationResult` (every check, the failures and the counts), the terminal summary (:func:`format_failures`)
and the stage's outputs (:func:`write_report`: the JSON summary, best-effort GX data docs). Numpy / pandas scalars and
NaN become plain JSON values (NaN and infinities: null)."""

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

from lungxray.data.validate.params import MAX_EXAMPLES

log = logging.getLogger(__name__)


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
        return jsonable(
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
        return jsonable(
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


def jsonable(obj: Any) -> Any:
    """Convert numpy / pandas scalars and NaN to plain JSON values (recursively)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
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
    s = json.dumps(jsonable(v), sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


# ----------------------------------------------------------------------------------------------------------------------
# report


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
    from lungxray.core.io import atomic_path, write_json
    from lungxray.data.validate.gx import import_gx

    write_json(json_path, result.to_dict())
    if docs_dir is None:
        return
    docs = Path(docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    try:
        import_gx()
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
