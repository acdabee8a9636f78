"""Who the ensemble's members are (the ``ensemble`` section of params) and what is recorded of each of them.

Kept apart from :mod:`lungxray.ensemble` (the stage's evaluation) so that compare, register and the CI gate know the
ensemble without importing the evaluation code. ``ensemble_member@<model>`` writes :func:`member_record` (the SHA-256
of the files the ensemble reads: DVC cannot list a params-chosen set of files in a stage's deps, so these records are
what orders the ``ensemble`` stage after every evaluate), and :func:`check_member` checks the files against it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from lungxray.core.config import Strict
from lungxray.core.errors import LungxrayError
from lungxray.core.io import read_json, sha256_file

MEMBER_RECORDS = "ensemble_members"  # metrics/ensemble_members/<model>.json (stage ensemble_member@<model>)
ENSEMBLE = "ensemble"  # its name in metrics/, reports/, the leaderboard and the registry's tags
MEMBER_FILES = ("predictions_val.csv", "predictions_test.csv", "predictions_test_official.csv", "eval.json",
                "train.json")  # predictions_test_official.csv: an empty table outside benchmark mode


class EnsembleParams(Strict):
    enabled: bool = Field(False, description="evaluate and register the ensemble beside the single models")
    members: list[str] = Field(default_factory=list, description="models of train.models whose probabilities are "
                                                                 "averaged; [] = every trained model")


def resolve_members(params: EnsembleParams, models: list[str]) -> list[str]:
    """The members in params order (``[]``: every model of ``train.models``); at least two, all trained."""
    members = list(params.members) or list(models)
    unknown = [m for m in members if m not in models]
    if unknown:
        raise LungxrayError(f"ensemble.members {unknown} are not in train.models {models}: an ensemble averages "
                            f"trained models only")
    if len(set(members)) != len(members):
        raise LungxrayError(f"ensemble.members lists a model twice: {members}")
    if len(members) < 2:
        raise LungxrayError(f"an ensemble needs at least two members, got {members}: add models to train.models or "
                            f"set ensemble.enabled: false")
    if ENSEMBLE in models:
        raise LungxrayError(f"train.models has a model named {ENSEMBLE!r}, the ensemble's name: rename it")
    return members


def evaluated_models(params: EnsembleParams, models: list[str]) -> list[str]:
    """Every model with an evaluation: the trained ones, then the ensemble when it is enabled."""
    return [*models, ENSEMBLE] if params.enabled else list(models)


# ---------------------------------------------------------------------------------------------------------------------
# a member's record (stage ensemble_member@<model>)


def member_record(name: str, metrics_dir: Path, model_path: Path) -> dict:
    """The SHA-256 of every file of ``name`` the ensemble reads (evaluate's outputs and its model.pt)."""
    files = {f: Path(metrics_dir) / f for f in MEMBER_FILES}
    missing = [str(p) for p in files.values() if not p.exists()] + ([] if Path(model_path).exists()
                                                                      else [str(model_path)])
    if missing:
        raise LungxrayError(f"{', '.join(missing)} missing: evaluate {name} first (dvc repro evaluate@{name})")
    return {"model": name, "sha256": {**{f: sha256_file(p) for f, p in files.items()},
                                      "model.pt": sha256_file(model_path)}}


def check_member(name: str, metrics_root: Path, models_root: Path, records_dir: Path) -> dict:
    """The member's record, after checking that its files are still those it describes."""
    f = Path(records_dir) / f"{name}.json"
    if not f.exists():
        raise LungxrayError(f"{f} is missing: run `dvc repro` (ensemble_member@{name} writes it after evaluate@{name})")
    recorded = read_json(f)
    now = member_record(name, Path(metrics_root) / name, Path(models_root) / name / "model.pt")
    changed = [k for k, v in now["sha256"].items() if recorded.get("sha256", {}).get(k) != v]
    if changed:
        raise LungxrayError(f"{name}'s {', '.join(changed)} changed since ensemble_member@{name} recorded them: run "
                            f"`dvc repro` so that the ensemble reads what was evaluated")
    return recorded
