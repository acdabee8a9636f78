"""The ensemble model: the mean class probability of several trained models, evaluated, ranked and registered like
any one of them.

* **Members** are models of ``train.models`` (several architectures, or several seeds of one model where the train
  section names them), fixed by the ``ensemble`` section of params: ``members: []`` takes every trained model. They
  are never chosen by looking at test figures.
* **Its probabilities** are, image by image, the mean of its members' probabilities as the evaluate stage wrote them
  (``metrics/<member>/predictions_<split>.csv``). The tables must cover the same images with the same labels and
  classes (:func:`lungxray.evaluate.metrics.align_predictions`); otherwise the stage stops and says which member
  differs.
* **Its figures** come from the evaluate stage's own functions (:func:`lungxray.evaluate.evaluation.score_split`, the
  same plots), into ``metrics/ensemble/`` and ``reports/ensemble/``, so compare ranks it, register can make it the
  champion and ``lungxray metrics check`` gates it. Its ``train.json`` is its build record: the sum of its members'
  trainable parameters (the tie breaker: an ensemble loses a tie to a single model) and seconds per epoch, its MLflow
  run and model. Its speed is that of its members run one after the other (latencies add up).
* **DVC** cannot template a list of files into a stage's deps, so ``ensemble_member@<model>`` records, after each
  model's evaluation, the SHA-256 of what the ensemble reads (:func:`lungxray.ensemble.members.member_record`,
  ``metrics/ensemble_members/<model>.json``); the ``ensemble`` stage depends on those records and checks the files
  against them before it reads them.

The registered model (:mod:`lungxray.serve.ensemble_model`) carries every member's ``model.pt``; each member prepares an
image its own way (size, aspect, normalisation) and the probabilities are averaged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lungxray.core import schema
from lungxray.core.errors import LungxrayError
from lungxray.core.io import read_json, sha256_file, write_csv, write_json
from lungxray.data.preprocess import load_split
from lungxray.ensemble.members import ENSEMBLE, MEMBER_RECORDS, EnsembleParams, check_member, resolve_members
from lungxray.evaluate import metrics
from lungxray.evaluate.evaluation import (
    fingerprint_images,
    fingerprint_split,
    save_figure,
    score_split,
    split_index,
    write_plots,
)
from lungxray.evaluate.metrics.tables import PROB_PREFIX, predictions_arrays
from lungxray.models.checkpoint import data_version, fingerprint

# ---------------------------------------------------------------------------------------------------------------------
# the mean probability


def mean_predictions(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One :func:`~lungxray.evaluate.metrics.predictions_table` whose probabilities are the members' mean, image by
    image, in the first member's order. Raises :class:`LungxrayError` naming the member whose table covers other images,
    labels or classes than the first's."""
    (first, base), *others = tables.items()
    cols = [c for c in base.columns if c.startswith(PROB_PREFIX)]
    total = base[cols].to_numpy(np.float64)
    for name, table in others:
        try:
            _, _, probs, _ = metrics.align_predictions(base, table)
        except (ValueError, KeyError) as e:
            raise LungxrayError(f"the predictions of {name} and {first} do not pair ({e}): every member must be "
                                f"evaluated on the same images; run `dvc repro`") from None
        total += probs
    out = base[["id", "unit", "label"]].copy()
    out[cols] = total / len(tables)
    return out


def _read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, dtype={"id": str, "unit": str, "label": str})


def _split_part(table: pd.DataFrame, processed: Path, split: str) -> pd.DataFrame:
    """The table's images with their source (from the processed index), after checking they are that split's."""
    if fingerprint_images(table.id, table.label) != fingerprint_split(processed, split):
        raise LungxrayError(f"the members' {split} predictions are not of the current {split} split of {processed} "
                            f"(stale): run `dvc repro` so that their evaluations run again")
    sources = split_index(processed, split).set_index("id").source
    return table.assign(source=table.id.map(sources).astype(str))


def _official_test(members: list[str], metrics_root: Path, processed: Path, classes: list[str], eval_params,
                   out_dir: Path) -> dict | None:
    """Benchmark mode: the figures of the members' mean on the whole official test set, computed as the evaluate stage
    computes a single model's (:func:`lungxray.evaluate.evaluation._official_test`); ``None`` (and an empty predictions
    table) outside benchmark mode."""
    name = f"predictions_{schema.OFFICIAL_TEST_SPLIT}.csv"
    table = mean_predictions({m: _read_table(metrics_root / m / name) for m in members})
    write_csv(out_dir / name, table)
    if _split_part(table, processed, schema.OFFICIAL_TEST_SPLIT).empty:  # refuses predictions of another set
        return None
    y, probs = predictions_arrays(table, classes)
    m = metrics.compute_metrics(y, probs, classes, eval_params, units=table.unit.tolist())
    return metrics.summary(metrics.with_no_skill(m, y, probs, classes, eval_params, table.unit.tolist()))


def _throughput(evals: dict[str, dict]) -> dict:
    """The members run one after the other: latencies add up, so do the seconds per image."""
    t = [e["throughput"] for e in evals.values()]
    return {"images_per_s": 1.0 / sum(1.0 / x["images_per_s"] for x in t),
            "latency_ms_median": sum(x["latency_ms_median"] for x in t),
            "method": "the members' measured throughput, run one after the other"}


def build_record(members: list[str], trains: dict[str, dict]) -> dict:
    """The ensemble's ``train.json``: its members' total trainable parameters and seconds per epoch."""
    return {"model": ENSEMBLE, "kind": "ensemble", "members": members,
            "trainable_parameters": sum(trains[m]["trainable_parameters"] for m in members),
            "seconds_per_epoch": sum(trains[m]["seconds_per_epoch"] for m in members), "epochs_to_converge": None,
            "member_runs": {m: trains[m].get("mlflow_run_id") for m in members}}


# ---------------------------------------------------------------------------------------------------------------------
# the ensemble stage


def _same_classes(evals: dict[str, dict]) -> list[str]:
    classes = {m: e["classes"] for m, e in evals.items()}
    (first, cls), *_ = classes.items()
    other = {m: c for m, c in classes.items() if c != cls}
    if other:
        raise LungxrayError(f"the members predict different classes ({first}: {cls}; {other}): an ensemble averages "
                            f"models of one taxonomy")
    return list(cls)


def evaluate_ensemble(params: EnsembleParams, models: list[str], processed: Path, metrics_root: Path,
                      models_root: Path, reports_dir: Path, eval_params, mlflow_params=None) -> dict:
    """Average the members' evaluated probabilities, score them as the evaluate stage scores a model, write
    ``metrics/ensemble/`` (predictions, plots data, headlines, train.json, eval.json last) and ``reports_dir``;
    with ``mlflow_params``, log an MLflow run with the registrable ensemble model
    (:mod:`lungxray.serve.ensemble_model`)."""
    members = resolve_members(params, models)
    processed, metrics_root, models_root = Path(processed), Path(metrics_root), Path(models_root)
    out_dir = metrics_root / ENSEMBLE
    records = {m: check_member(m, metrics_root, models_root, metrics_root / MEMBER_RECORDS) for m in members}
    evals = {m: read_json(metrics_root / m / "eval.json") for m in members}
    classes = _same_classes(evals)
    out: dict = {"model": ENSEMBLE, "kind": "ensemble", "members": members, "classes": classes,
                 "combine": "mean of the members' class probabilities, image by image",
                 "test_set": fingerprint_split(processed, "test"), "val_set": fingerprint_split(processed, "val"),
                 "inputs": {"data_version": data_version(processed),
                            "evaluate_params": fingerprint(eval_params.model_dump()),
                            "members": {m: r["sha256"]["model.pt"] for m, r in records.items()}}}
    warnings, results, tables = [], {}, {}
    for split in schema.EVAL_SPLITS:
        table = mean_predictions({m: _read_table(metrics_root / m / f"predictions_{split}.csv") for m in members})
        tables[split] = table
        write_csv(out_dir / f"predictions_{split}.csv", table)
        if table.empty and split == "test" and eval_params.allow_empty_test:
            out["test"] = None
            warnings.append("the test split is empty (held back): only validation metrics are reported")
            continue
        if table.empty:
            raise LungxrayError(f"the members' {split} predictions are empty: nothing to evaluate")
        part = _split_part(table, processed, split)
        y, probs = predictions_arrays(table, classes)
        m, out[split] = score_split(y, probs, part, classes, eval_params)
        results[split] = (y, probs, m)
    official = _official_test(members, metrics_root, processed, classes, eval_params, out_dir)
    if official is not None:
        out[schema.OFFICIAL_TEST_SPLIT] = official
    write_plots(ENSEMBLE, results, classes, out_dir, Path(reports_dir), out)
    _write_gradcam(members, models_root, processed, out["plots_split"], results[out["plots_split"]],
                   tables[out["plots_split"]].id, classes, Path(reports_dir))
    out["warnings"] = warnings
    out["throughput"] = _throughput(evals)
    for split in schema.EVAL_SPLITS:
        write_json(schema.headline_file(out_dir, split), metrics.headline(out[split]))
    record = build_record(members, {m: read_json(metrics_root / m / "train.json") for m in members})
    if mlflow_params is not None:
        record.update(log_ensemble_run(members, out, results, out_dir, Path(reports_dir), mlflow_params))
    write_json(out_dir / "train.json", record)
    write_json(out_dir / "eval.json", out)  # last: its presence means the evaluation finished
    return out


def log_ensemble_run(names: list[str], out: dict, results: dict, metrics_dir: Path, reports_dir: Path,
                     mlflow_params) -> dict:
    """One MLflow run for the ensemble (tags ``model=ensemble``, ``kind=ensemble``, ``members``; its members as
    params), then its evaluation as a single model's (:func:`lungxray.core.tracking.log_evaluation`). Its pyfunc
    model is logged into this run by the register stage. Returns ``mlflow_run_id``."""
    from lungxray.core.tracking import log_evaluation, mlflow_setup

    mlflow = mlflow_setup(mlflow_params)
    with mlflow.start_run(run_name=ENSEMBLE) as run:
        mlflow.set_tags({"model": ENSEMBLE, "kind": "ensemble", "members": ",".join(names)})
        mlflow.log_params({"ensemble.members": ",".join(names), "ensemble.combine": "mean probability"})
    log_evaluation(run.info.run_id, out, results, metrics_dir, reports_dir, mlflow_params)
    return {"mlflow_run_id": run.info.run_id}


def _write_gradcam(members: list[str], models_root: Path, processed: Path, split: str, result: tuple, ids: pd.Series,
                   classes: list[str], reports_dir: Path) -> None:
    """``gradcam.png`` as the evaluate stage writes it for a model: per class, the most confident correct and wrong
    images of the plotted split, each with the mean of the members' Grad-CAM maps for the ensemble's class."""
    from lungxray.evaluate.gradcam import heatmap_grid, mean_heatmaps
    from lungxray.models.trained import load_trained_model

    x, _ = load_split(processed, split)
    position = pd.Series(np.arange(len(x)), index=split_index(processed, split).id)
    images = x[position.loc[ids].to_numpy()]  # in the predictions' order
    trained = [load_trained_model(models_root / m / "model.pt", device="auto") for m in members]
    y, probs, _ = result
    fig = heatmap_grid(images, y, probs, classes, lambda im, k: mean_heatmaps(trained, im, k),
                       title=f"ensemble of {', '.join(members)}: mean Grad-CAM of the predicted class ({split} split)")
    save_figure(fig, reports_dir / "gradcam.png")


def write_disabled(metrics_dir: Path, reports_dir: Path) -> dict:
    """``ensemble.enabled: false``: the stage's outputs say so (DVC expects them); nothing reads them."""
    metrics_dir, skipped = Path(metrics_dir), {"model": ENSEMBLE, "enabled": False,
                                               "skipped": "ensemble.enabled is false"}
    Path(reports_dir).mkdir(parents=True, exist_ok=True)
    (Path(reports_dir) / "skipped.txt").write_text("ensemble.enabled is false\n")  # git keeps no empty folder
    for split in (*schema.EVAL_SPLITS, schema.OFFICIAL_TEST_SPLIT):
        write_csv(metrics_dir / f"predictions_{split}.csv", pd.DataFrame(columns=["id", "unit", "label"]))
    for split in schema.EVAL_SPLITS:
        write_json(schema.headline_file(metrics_dir, split), {})
    write_csv(metrics_dir / "roc.csv", pd.DataFrame(columns=["class", "fpr", "tpr", "threshold"]))
    write_csv(metrics_dir / "confusion.csv", pd.DataFrame(columns=["actual", "predicted"]))
    write_json(metrics_dir / "train.json", skipped)
    write_json(metrics_dir / "eval.json", skipped)
    return skipped


def stale_ensemble(params: EnsembleParams, models: list[str], metrics_root: Path, processed: Path,
                   models_root: Path, eval_params) -> dict[str, str]:
    """``{ensemble: what changed}`` when its eval.json was computed from other data, settings or members' models
    than the current ones (as :func:`lungxray.evaluate.evaluation.stale_evaluations` for single models); ``{}``
    otherwise."""
    if not params.enabled:
        return {}
    f = Path(metrics_root) / ENSEMBLE / "eval.json"
    recorded = read_json(f).get("inputs") if f.exists() else None
    if not isinstance(recorded, dict) or not (Path(processed) / "index.csv").exists():
        return {ENSEMBLE: "its eval.json or the processed data is missing"}
    members = resolve_members(params, models)
    model_files = {m: Path(models_root) / m / "model.pt" for m in members}
    now = {"data_version": data_version(Path(processed)), "evaluate_params": fingerprint(eval_params.model_dump()),
           "members": {m: sha256_file(p) if p.exists() else None for m, p in model_files.items()}}
    what = {"data_version": f"{processed} changed", "evaluate_params": "the evaluate settings changed",
            "members": "its members or their model.pt changed"}
    changed = [what[k] for k in what if recorded.get(k) != now[k]]
    return {ENSEMBLE: ", ".join(changed) + " since it was evaluated"} if changed else {}
