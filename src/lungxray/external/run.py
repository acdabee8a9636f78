"""The external stage: leave-one-source-out. How well does an architecture do on a source it never trained on?

For each held-out source (``external.sources``; default: every source with at least ``external.min_images`` kept
images) and each chosen architecture (``external.models``; default: see :mod:`lungxray.external.plan`), a model is
trained with :func:`lungxray.train.fit.train_model` on the other sources (their train split; their val split for early
stopping and the best epoch) and tested on every kept image of the held-out source; no image sharing a split unit
(patient or X-ray) with the held-out source trains it. The fold rules: :mod:`lungxray.external.folds`; the figures and
the report: :mod:`lungxray.external.report`.

* One stage loops over the folds (rather than a DVC ``foreach``): the default list of sources depends on the data
  (kept images per source, known after preprocess), while a ``foreach`` needs its list in params.yaml when dvc.yaml
  is parsed; and the leaderboard needs all folds in one file.
* Fold work lives in ``models/external/<source>/`` (``data/``: the fold folder; ``<model>/``: the model, its
  training curve and its predictions on the held-out source). A rerun (after an interruption, even ``kill -9``)
  keeps every fold model whose finished run has the same fingerprints (its settings, the fold's data, the training
  code and the library versions: :mod:`lungxray.models.checkpoint`) and resumes the one that was cut short from its
  checkpoint: only a model whose fingerprints changed trains again (delete ``models/external/`` to retrain them all);
  the figures on the held-out source are always recomputed. A fold's arrays are removed once it is evaluated.
* What it reads of the in-source models (the choice of architectures, their test figures) and of the train settings
  (the chosen architectures' own) comes from the plan (``reports/external_plan.json``, :mod:`lungxray.external.plan`),
  not from ``metrics/`` nor the whole ``train`` section: a change there that moves none of them (the ensemble's
  outputs, another model's options) leaves the fold models trained. It trains with the ``train`` section only when
  that section gives the chosen architectures the plan's settings.
* Each fold model is one MLflow run in the pipeline's experiment (its training run, tagged ``stage: external`` and
  ``held_out_source``, with the external figures as ``external/*`` metrics); registering no model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lungxray.core.errors import LungxrayError
from lungxray.core.io import read_json, write_csv
from lungxray.core.tracking import log_external_fold
from lungxray.evaluate.metrics import EvaluateParams, predictions_table
from lungxray.external.folds import Fold, drop_arrays, fold_problem, kept_index, make_fold, source_counts, write_fold
from lungxray.external.plan import ExternalParams, settings_problem
from lungxray.external.report import external_summary, fold_metrics, gap, in_source_figures
from lungxray.models.trained import load_trained_model
from lungxray.train.fit import train_model
from lungxray.train.settings import TrainParams

log = logging.getLogger(__name__)

SOURCES_RULE = "every source with at least {n} kept images"


# ---------------------------------------------------------------------------------------------------------------------
# what runs


def choose_sources(params: ExternalParams, counts: dict[str, int]) -> list[str]:
    """The sources to hold out: ``params.sources`` as given (each must have kept images), else every source with at
    least ``min_images`` kept images (sorted by name)."""
    if params.sources is None:
        return [s for s, n in counts.items() if n >= params.min_images]
    unknown = [s for s in params.sources if s not in counts]
    if unknown:
        raise LungxrayError(f"external.sources names {unknown}, which have no kept image; sources with kept images: "
                            + ", ".join(f"{s} ({n})" for s, n in counts.items()))
    return list(dict.fromkeys(params.sources))


def fold_train_params(train: TrainParams, epochs: int | None) -> TrainParams:
    """The train settings of a fold model: the train section's, with ``epochs`` (when set) for every model (variants
    and model_options included)."""
    update: dict = {}
    if epochs is not None:
        update["epochs"] = epochs
        update["model_options"] = {m: o.model_copy(update={"epochs": None}) for m, o in train.model_options.items()}
        update["variants"] = {m: v.model_copy(update={"epochs": None}) for m, v in train.variants.items()}
    return train.model_copy(update=update)


# ---------------------------------------------------------------------------------------------------------------------
# the folds


def run_external(params: ExternalParams, train: TrainParams, evaluate: EvaluateParams, plan: dict,
                 processed: Path, work_dir: Path, extra_params: dict | None = None) -> dict:
    """Train and test every fold with the plan's architectures (:func:`lungxray.external.plan.external_plan`);
    return the report (what ``reports/external.json`` holds)."""
    processed, work_dir = Path(processed), Path(work_dir)
    index = kept_index(processed)
    counts = source_counts(index)
    sources = choose_sources(params, counts)
    models, models_rule = (plan["models"], plan["models_rule"]) if sources else ([], "no fold")
    problem = settings_problem(plan, train) if models else None
    if problem:
        raise LungxrayError(f"{problem}: run `dvc repro external` (train_settings and external_plan run first), "
                            f"or `python stages/train_settings.py` and `python stages/external_plan.py`")
    classes = read_json(processed / "stats.json")["classes"]
    fold_params = fold_train_params(train, params.epochs)
    report: dict = {"models": models, "models_rule": models_rule, "epochs": params.epochs, "ci": evaluate.ci,
                    "sources_rule": ("external.sources" if params.sources is not None
                                     else SOURCES_RULE.format(n=params.min_images)),
                    "kept_images": counts, "folds": {}, "skipped": {}}
    for source in sources:
        fold = make_fold(index, source)
        problem = fold_problem(fold)
        if problem:
            log.warning("not holding out %s: %s", source, problem)
            report["skipped"][source] = problem
            continue
        report["folds"][source] = _run_fold(fold, models, classes, fold_params, evaluate, processed,
                                            plan["in_source"], work_dir / source, extra_params)
    report["summary"] = external_summary(report["folds"])
    return report


def _run_fold(fold: Fold, models: list[str], classes: list[str], train: TrainParams, evaluate: EvaluateParams,
              processed: Path, in_source: dict, fold_dir: Path, extra_params: dict | None) -> dict:
    """Write the fold folder, train and test each model, remove the arrays; return the fold's part of the report."""
    data_dir = fold_dir / "data"
    write_fold(fold, processed, data_dir)
    trained = set(fold.train.label)
    out = {"images": int(len(fold.test)), "units": int(fold.test.unit.nunique()),
           "classes": {c: int((fold.test.label == c).sum()) for c in classes if (fold.test.label == c).any()},
           "trained_on": sorted(set(fold.train.source) | set(fold.val.source)),
           "train_images": int(len(fold.train)), "val_images": int(len(fold.val)), "excluded": fold.excluded,
           "untrained_classes": [c for c in classes if (fold.test.label == c).any() and c not in trained],
           "models": {}}
    log.info("held out %s: %d images; training on %d (%d excluded for a shared unit)", fold.held_out, out["images"],
             out["train_images"], sum(fold.excluded.values()))
    for name in models:
        extra = {**(extra_params or {}), "external": {"held_out_source": fold.held_out}}
        t = train_model(name, train, data_dir, fold_dir / name, fold_dir / name, extra_params=extra,
                        reuse_finished=True)
        result = _test_model(fold_dir / name, data_dir, classes, evaluate)
        result["in_source"] = in_source_figures(in_source.get(name), fold.held_out)
        result["gap"] = gap(result["macro_recall"], result["in_source"])
        result["mlflow_run_id"] = t.get("mlflow_run_id")
        result["epochs_run"] = t["epochs_run"]
        if t.get("mlflow_run_id"):
            log_external_fold(t["mlflow_run_id"], name, fold.held_out, result,
                              [fold_dir / name / "predictions.csv", data_dir / "index.csv"], train.mlflow)
        out["models"][name] = result
    drop_arrays(data_dir)
    return out


def _test_model(model_dir: Path, data_dir: Path, classes: list[str], evaluate: EvaluateParams) -> dict:
    """A fold model on every image of its held-out source (the fold folder's test split): figures and predictions."""
    from lungxray.data.preprocess import load_split

    model = load_trained_model(model_dir / "model.pt", device="auto")
    x, y = load_split(data_dir, "test")
    index = _test_index(data_dir)
    probs = model.proba(x, batch_size=evaluate.batch_size, temperature=1.0)  # uncalibrated, as it always was
    units = index.unit.tolist()
    write_csv(model_dir / "predictions.csv", predictions_table(index.id.tolist(), units, y, probs, classes))
    return fold_metrics(y, np.asarray(probs), classes, evaluate, units)


def _test_index(data_dir: Path):
    """The fold folder's test rows (the held-out source) in array order."""
    import pandas as pd

    index = pd.read_csv(Path(data_dir) / "index.csv", keep_default_na=False, dtype={"id": str, "unit": str})
    return index[index.split == "test"].sort_values("row").reset_index(drop=True)

