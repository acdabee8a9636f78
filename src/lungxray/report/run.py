"""The run the report describes: the stage outputs it reads (paths from :mod:`lungxray.core.schema`), which of them
are required, and a record of every optional one that is absent, with the stage that writes it.

Required (the report stops, naming the stage to run): ``reports/promotion.json`` (register), ``reports/
leaderboard.json`` (compare) and the champion's ``metrics/<champion>/eval.json`` (evaluate, or ensemble). Everything
else is optional: a run with one source, without external folds, without the shortcut check, or with a figure
missing still gives a complete report that says what is absent and why.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lungxray.core import schema
from lungxray.core.errors import LungxrayError
from lungxray.report.page import figure

__all__ = ["Run", "load_run", "REQUIRED"]

log = logging.getLogger(__name__)

REQUIRED = {schema.PROMOTION: "register", schema.LEADERBOARD_JSON: "compare"}


@dataclass
class Run:
    """The outputs of one pipeline run under ``root`` (paths in the report are relative to it)."""

    root: Path
    params: dict
    promotion: dict
    leaderboard: dict
    champion: str  # the champion's model name (a leaderboard row: a trained model or "ensemble")
    eval: dict  # the champion's eval.json
    absent: list[tuple[str, str]] = field(default_factory=list)  # (what, why) of every optional output missing

    def path(self, rel: str | Path) -> Path:
        return self.root / rel

    def json(self, rel: str | Path, stage: str, what: str = "") -> Any:
        """An optional JSON output, or None (recorded as absent: the stage that writes it)."""
        f = self.path(rel)
        if not f.is_file():
            self.absent.append((what or str(rel), f"{rel} is missing: `dvc repro {stage}` writes it"))
            return None
        return json.loads(f.read_text())

    def csv(self, rel: str | Path, stage: str, what: str = "") -> pd.DataFrame | None:
        f = self.path(rel)
        if not f.is_file():
            self.absent.append((what or str(rel), f"{rel} is missing: `dvc repro {stage}` writes it"))
            return None
        return pd.read_csv(f, keep_default_na=False, dtype=str)

    def figure(self, rel: str | Path, what: str, caption: str, max_width: str = "100%") -> str:
        """A PNG output embedded in the page (:func:`lungxray.report.page.figure`); recorded as absent when missing."""
        if not self.path(rel).is_file():
            self.absent.append((f"figure: {what}", f"{rel} is missing"))
        return figure(rel, what, caption, self.root, max_width)

    @property
    def eval_file(self) -> str:
        return str(schema.model_metrics_dir(self.champion) / "eval.json")

    @property
    def classes(self) -> list[str]:
        return list(self.eval.get("classes") or (self.params.get("fetch") or {}).get("classes") or [])

    def producer(self, model: str) -> str:
        """The stage that writes ``model``'s evaluation."""
        return "ensemble" if model == "ensemble" else f"evaluate@{model}"


def _required_json(root: Path, rel: Path, stage: str) -> dict:
    f = root / rel
    if not f.is_file():
        raise LungxrayError(f"{rel} is missing: the report needs it; run `dvc repro {stage}` (or the whole pipeline: "
                            f"`dvc repro`) first")
    return json.loads(f.read_text())


def champion_model(promotion: dict, leaderboard: dict) -> str:
    """The champion after the register stage (its model name); the leaderboard's first row when the registry kept a
    champion of an earlier run that is not on this leaderboard."""
    after = promotion.get("champion_after") or {}
    name = after.get("model")
    if name in leaderboard:
        return name
    if not leaderboard:
        raise LungxrayError(f"{schema.LEADERBOARD_JSON} lists no model: run `dvc repro compare`")
    first = next(iter(leaderboard))
    log.warning("the registry's champion %r is not on this run's leaderboard: the report describes %s", name, first)
    return first


def load_run(root: str | Path = ".") -> Run:
    """Read the required outputs under ``root`` (stops with the stage to run when one is missing)."""
    root = Path(root)
    promotion = _required_json(root, schema.PROMOTION, REQUIRED[schema.PROMOTION])
    leaderboard = _required_json(root, schema.LEADERBOARD_JSON, REQUIRED[schema.LEADERBOARD_JSON])
    champion = champion_model(promotion, leaderboard)
    stage = "ensemble" if champion == "ensemble" else f"evaluate@{champion}"
    ev = _required_json(root, schema.model_metrics_dir(champion) / "eval.json", stage)
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text()) if params_file.is_file() else {}
    run = Run(root, params or {}, promotion, leaderboard, champion, ev)
    if not params_file.is_file():
        run.absent.append(("the params", "params.yaml is missing beside the run's outputs"))
    return run
