"""The external stage's settings and its plan: which architectures each fold trains, how they train, and the
in-source figures its report shows beside theirs.

The plan is what the external stage reads of ``metrics/`` and of the train settings (the stage ``external_plan``
writes it to ``reports/external_plan.json``). The external stage depends on that file rather than on the whole
``metrics/`` folder and the whole ``train`` section, so a change there that moves neither the choice, nor those
figures, nor the chosen architectures' own settings (the ensemble's outputs, a model's training curve, another
model's ``model_options``) does not retrain its fold models.

* ``settings``: each chosen architecture's settings file (``models/settings/<model>.json``, written by the
  ``train_settings`` stage for ``train.models`` and ``external.models``: its resolved settings, where it is tracked,
  the library versions), as each ``train@<model>`` depends on its own. The external stage trains with the ``train``
  section of params.yaml and refuses to run when a chosen architecture's settings differ from the plan's
  (:func:`settings_problem`): its dependencies would not be what it trained with.

Default choice (``external.models`` unset): the champion is only known after the register stage, which runs after
compare, which shows the external figures; so the default takes what the register stage will consider first: row 1
of the leaderboard (the promotion rule applied to train.models' val figures, :func:`lungxray.compare.promote.rank`),
plus the architecture of train.models with the fewest total parameters (``train.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from lungxray.compare.promote import PromotionParams
from lungxray.core.config import Strict
from lungxray.core.errors import LungxrayError
from lungxray.core.io import read_json
from lungxray.train.settings import TrainParams, settings_record


class ExternalParams(Strict):
    """The ``external:`` section: which sources are held out, which architectures, how long they train."""

    sources: list[str] | None = Field(None, description="sources to hold out, one fold each; null = every source "
                                                        "with at least min_images kept images; [] = none")
    min_images: int = Field(100, ge=1, description="kept images a source needs to be held out by default")
    models: list[str] | None = Field(None, description="architectures trained in each fold; null = the first of "
                                                       "train.models in the promotion rule's order (the leaderboard's "
                                                       "row 1) and the one with the fewest parameters")
    epochs: int | None = Field(None, ge=1, description="epochs per fold model instead of the train settings' (CI)")

    @field_validator("models")
    @classmethod
    def _known_models(cls, v: list[str] | None) -> list[str] | None:
        from lungxray.models.architectures import MODEL_NAMES

        unknown = [m for m in v or [] if m not in MODEL_NAMES]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; valid: {', '.join(MODEL_NAMES)}")
        if v is not None and len(set(v)) != len(v):
            raise ValueError("external.models lists a model twice")
        return v


MODELS_RULE = ("default: row 1 of the leaderboard (the promotion rule on val among train.models) and the "
               "architecture of train.models with the fewest parameters")
IN_SOURCE_KEYS = ("macro_recall", "macro_recall_ci_low", "macro_recall_ci_high", "accuracy")
PER_SOURCE_KEYS = ("n_samples", "macro_recall", "accuracy")


def external_plan(params: ExternalParams, train: TrainParams, metrics_root: Path, promotion: PromotionParams,
                  settings_root: Path) -> dict[str, Any]:
    """``{"models", "models_rule", "in_source": {model: in-source test figures or None}, "settings": {model: its
    settings file}}`` (see the module docstring); ``settings_root``: the train_settings stage's folder."""
    models, rule = choose_models(params, train, metrics_root, promotion)
    return {"models": models, "models_rule": rule,
            "in_source": {m: in_source_test(Path(metrics_root) / m / "eval.json") for m in models},
            "settings": {m: _settings_file(Path(settings_root), m) for m in models}}


def settings_models(params: ExternalParams, train: TrainParams) -> list[str]:
    """The models the train_settings stage writes a settings file for: ``train.models``, then those of
    ``external.models`` that train.models lacks (the plan's default choice is among train.models)."""
    return list(dict.fromkeys([*train.models, *(params.models or [])]))


def _settings_file(settings_root: Path, model: str) -> dict:
    path = settings_root / f"{model}.json"
    if not path.exists():
        raise LungxrayError(f"{path} is missing: the external folds train {model} with the settings the "
                            f"train_settings stage writes there; run `dvc repro external_plan` (it runs "
                            f"train_settings first)")
    return read_json(path)


def settings_problem(plan: dict, train: TrainParams) -> str | None:
    """Why the external stage may not train the plan's architectures with ``train`` (a chosen architecture whose
    settings differ from those the plan was made with, or a plan without settings), or None."""
    recorded = plan.get("settings")
    if not isinstance(recorded, dict):
        return "the plan carries no train settings (written by an older version)"
    changed = [m for m in plan["models"] if recorded.get(m) != settings_record(train, m)]
    if changed:
        return (f"the train settings of {', '.join(changed)} (the train section of params.yaml, the library "
                f"versions) differ from those the plan was made with")
    return None


def choose_models(params: ExternalParams, train: TrainParams, metrics_root: Path,
                  promotion: PromotionParams) -> tuple[list[str], str]:
    """The architectures of each fold and the rule that chose them (the default: see the module docstring)."""
    if params.models is not None:
        return list(params.models), "external.models"
    from lungxray.compare.leaderboard import leaderboard_rows
    from lungxray.compare.promote import rank

    rows = leaderboard_rows(train.models, metrics_root)
    first = rank(rows, promotion)[0]["model"]
    sizes = {m: read_json(Path(metrics_root) / m / "train.json")["total_parameters"] for m in train.models}
    smallest = min(train.models, key=lambda m: (sizes[m], m))
    return list(dict.fromkeys([first, smallest])), MODELS_RULE


def in_source_test(eval_json: Path) -> dict[str, Any] | None:
    """The evaluate stage's test figures of an architecture that the external report shows: the whole test split's
    and each source's; None when that architecture was not evaluated in-source."""
    eval_json = Path(eval_json)
    if not eval_json.exists():
        return None
    test = read_json(eval_json).get("test") or {}
    return {**{k: test.get(k) for k in IN_SOURCE_KEYS},
            "by_source": {s: {k: f.get(k) for k in PER_SOURCE_KEYS} for s, f in (test.get("by_source") or {}).items()}}
