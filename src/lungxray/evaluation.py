"""Orchestration of the evaluate, compare and register stages (the pure metric/decision code lives in
:mod:`lungxray.evaluate`, :mod:`lungxray.promote` and :mod:`lungxray.gate`).

Every ``eval.json`` records what it was computed from (``inputs``: the processed data's version, the model file's
SHA-256 and the evaluate settings' fingerprint) and on which images (``val_set``, ``test_set``: fingerprints of ids and
labels), so that a metrics file left over from other inputs is recognised (:func:`stale_evaluations`) and never
compared as if it were current.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import evaluate as ev
from . import schema
from .errors import LungxrayError
from .io import read_json, sha256_file, write_csv, write_json
from .preprocess import load_split
from .promote import PromotionParams, decide, selection_split
from .train import MlflowParams, data_version, fingerprint, load_trained, mlflow_setup

log = logging.getLogger(__name__)
EVAL_SPLITS = ("test", "val")


def fingerprint_images(ids, labels) -> str:
    """Identifies a set of images with their labels (order does not matter)."""
    pairs = sorted(zip(map(str, ids), map(str, labels)))
    return hashlib.sha256("\n".join(f"{i}\t{l}" for i, l in pairs).encode()).hexdigest()[:16]


def fingerprint_split(processed: Path, split: str) -> str:
    """Identifies one split (ids and labels), so that two models are compared on the same images only."""
    index = pd.read_csv(Path(processed) / "index.csv", keep_default_na=False, dtype=str)
    part = index[index.split == split]
    return fingerprint_images(part.id, part.label)


def fingerprint_test_set(processed: Path) -> str:
    return fingerprint_split(processed, "test")


def evaluation_inputs(processed: Path, model_path: Path, params: ev.EvaluateParams) -> dict[str, str]:
    """What an evaluation is computed from: data version, model file hash, settings (recorded in eval.json)."""
    return {"data_version": data_version(Path(processed)), "model_sha256": sha256_file(model_path),
            "evaluate_params": fingerprint(params.model_dump())}


def _short(m: dict) -> dict:
    keys = ("n_samples", "accuracy", "macro_recall", "macro_precision", "macro_f1", "macro_auc", "ece")
    return {k: m.get(k) for k in keys}


def _check_model(name: str, processed: Path, model_path: Path, ck: dict) -> dict:
    """The processed data's stats.json, after checking that the model was trained on this data."""
    current = data_version(processed)
    trained_on = ck["config"]["data"]["version"]
    if trained_on != current:
        raise LungxrayError(
            f"{model_path} is stale: it was trained on data version {trained_on}, the preprocessed data is now "
            f"{current}. Rerun `dvc repro` so that train@{name} runs again before evaluating.")
    stats = json.loads((processed / "stats.json").read_text())
    if stats["classes"] != ck["classes"]:
        raise LungxrayError(f"{model_path} predicts {ck['classes']} but the data has classes {stats['classes']}")
    return stats


def _split_index(processed: Path, split: str) -> pd.DataFrame:
    """The index rows of one split in array order; they must carry the split unit (dedupe group and patient)."""
    index = pd.read_csv(processed / "index.csv", keep_default_na=False, dtype={"id": str, "unit": str, "source": str})
    if "unit" not in index.columns:
        raise LungxrayError(f"{processed / 'index.csv'} has no unit column (written by an older preprocess): rerun "
                            f"`dvc repro` so that preprocess writes it")
    return index[index.split == split].sort_values("row").reset_index(drop=True)


def evaluate_model(name: str, processed: Path, model_path: Path, metrics_dir: Path, reports_dir: Path,
                   params: ev.EvaluateParams, train_metrics: dict | None = None,
                   mlflow_params: MlflowParams | None = None) -> dict:
    """Evaluate one trained model on the test and val splits; write metrics, per-image predictions, plots and plot
    data (``predictions_<split>.csv``: id, unit, label, one probability per class)."""
    processed, metrics_dir, reports_dir = Path(processed), Path(metrics_dir), Path(reports_dir)
    model, ck = load_trained(model_path)
    stats = _check_model(name, processed, model_path, ck)
    classes = ck["classes"]
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the same command on a GPU machine or a CPU
    out: dict = {"model": name, "classes": classes, "test_set": fingerprint_split(processed, "test"),
                 "val_set": fingerprint_split(processed, "val"),
                 "inputs": evaluation_inputs(processed, model_path, params)}
    warnings: list[str] = []
    results: dict[str, tuple] = {}
    for split in EVAL_SPLITS:
        x, y = load_split(processed, split)
        part = _split_index(processed, split)
        if len(y) == 0:
            if split == "test" and params.allow_empty_test:
                out["test"] = None
                write_csv(metrics_dir / "predictions_test.csv",
                          ev.predictions_table([], [], y, np.zeros((0, len(classes))), classes))
                warnings.append("the test split is empty (held back): only validation metrics are reported")
                continue
            raise LungxrayError(f"the {split} split is empty: nothing to evaluate (check split.ratios, or set "
                                f"evaluate.allow_empty_test when the test split is held back on purpose)")
        absent = [c for i, c in enumerate(classes) if not (y == i).any()]
        if absent:
            warnings.append(f"{split}: no image of class(es) {absent}: their sensitivity and AUC are undefined "
                            f"(reported as null); macro averages use the classes present")
        probs = ev.predict_proba(model, x, ck["mean"], ck["std"], batch_size=params.batch_size, device=device)
        m = ev.compute_metrics(y, probs, classes, params, units=part.unit.tolist())
        by_source = ev.metrics_by_source(y, probs, part.source.astype(str).tolist(), classes, params,
                                         units=part.unit.tolist())
        out[split] = ev.summary(m)
        out[split]["by_source"] = {s: _short(v) for s, v in by_source.items()}
        write_csv(metrics_dir / f"predictions_{split}.csv",
                  ev.predictions_table(part.id.tolist(), part.unit.tolist(), y, probs, classes))
        results[split] = (y, probs, m)
    official = _official_test(model, ck, processed, params, device)
    if official is not None:
        out[schema.OFFICIAL_TEST_SPLIT] = official
    _write_plots(name, results, classes, metrics_dir, reports_dir, out)
    out["warnings"] = warnings
    out["throughput"] = ev.measure_throughput(model, stats["image_size"], batch_size=params.batch_size,
                                              device=device, n_batches=params.latency_batches)
    model.cpu()
    for split in EVAL_SPLITS:
        write_json(schema.headline_file(metrics_dir, split), ev.headline(out[split]))
    write_json(metrics_dir / "eval.json", out)  # last: its presence means the evaluation finished
    run_id = (train_metrics or {}).get("mlflow_run_id")
    if run_id:
        _log_evaluation(run_id, out, results, metrics_dir, reports_dir, mlflow_params)
    return out


def _official_test(model, ck: dict, processed: Path, params: ev.EvaluateParams, device: str) -> dict | None:
    """Benchmark mode: the figures on the sources' whole official test set (copies within it included), the row
    comparable with published tables; reported beside the deduplicated test split, never used for selection."""
    part = _split_index(processed, schema.OFFICIAL_TEST_SPLIT)
    if part.empty:
        return None
    x, y = load_split(processed, schema.OFFICIAL_TEST_SPLIT)
    probs = ev.predict_proba(model, x, ck["mean"], ck["std"], batch_size=params.batch_size, device=device)
    return ev.summary(ev.compute_metrics(y, probs, ck["classes"], params, units=part.unit.tolist()))


def _write_plots(name: str, results: dict, classes: list[str], metrics_dir: Path, reports_dir: Path,
                 out: dict) -> None:
    """Plots of the test split (of val when the test split is held back), for people (PNG) and dvc plots (CSV)."""
    shown = "test" if "test" in results else "val"
    y, probs, m = results[shown]
    out["plots_split"] = shown
    reports_dir.mkdir(parents=True, exist_ok=True)
    ev.plot_confusion_matrix(m["confusion_matrix"]["matrix"], classes, reports_dir / "confusion_matrix.png",
                             title=f"{name}: {shown}")
    ev.plot_roc_curves(y, probs, classes, reports_dir / "roc.png", title=f"{name}: {shown} ROC (one-vs-rest)")
    ev.plot_reliability(m["reliability"], reports_dir / "reliability.png", title=f"{name}: calibration ({shown})")
    (reports_dir / "classification_report.txt").write_text(f"{name}, {shown} split\n\n{m['classification_report']}\n")
    write_csv(metrics_dir / "roc.csv", ev.roc_points(y, probs, classes))
    write_csv(metrics_dir / "confusion.csv", ev.confusion_pairs(y, probs.argmax(1), classes))


def _log_evaluation(run_id: str, out: dict, results: dict, metrics_dir: Path, reports_dir: Path,
                    mlflow_params: MlflowParams | None) -> None:
    """Metrics, plots and per-image predictions into the model's training run (the registry finds them there)."""
    mlflow = mlflow_setup(mlflow_params or MlflowParams())
    with mlflow.start_run(run_id=run_id):
        flat = {f"{split}/{k}": v for split in EVAL_SPLITS if out[split] is not None
                for k, v in out[split].items() if isinstance(v, (int, float)) and v is not None}
        flat["inference/images_per_s"] = out["throughput"]["images_per_s"]
        flat["inference/latency_ms_median"] = out["throughput"]["latency_ms_median"]
        mlflow.log_metrics({k.replace("/n_samples", "/images"): float(v) for k, v in flat.items()})
        for f in ("confusion_matrix.png", "roc.png", "reliability.png", "classification_report.txt"):
            if (reports_dir / f).exists():
                mlflow.log_artifact(str(reports_dir / f), artifact_path="evaluation")
        for split in EVAL_SPLITS:
            mlflow.log_artifact(str(metrics_dir / f"predictions_{split}.csv"), artifact_path="evaluation")
        if "test" in results:
            mlflow.log_dict(results["test"][2], "evaluation/test_metrics.json")
        mlflow.set_tags({"test_set": out["test_set"], "val_set": out["val_set"]})


def load_predictions(models: list[str], metrics_root: Path, split: str) -> dict[str, pd.DataFrame]:
    """Each model's ``predictions_<split>.csv`` (written by evaluate)."""
    out = {}
    for name in models:
        f = Path(metrics_root) / name / f"predictions_{split}.csv"
        if not f.exists():
            raise LungxrayError(f"{f} is missing: rerun `dvc repro` (evaluate@{name} writes it)")
        out[name] = pd.read_csv(f, keep_default_na=False, dtype={"id": str, "unit": str, "label": str})
    return out


def stale_evaluations(models: list[str], metrics_root: Path, processed: Path, models_root: Path,
                      params: ev.EvaluateParams) -> dict[str, str]:
    """Models whose ``eval.json`` was computed from other inputs than the current files: ``{model: what changed}``."""
    processed = Path(processed)
    if not (processed / "index.csv").exists():
        return {m: f"{processed} is missing, so nothing shows the metrics are current" for m in models}
    current = {"data_version": data_version(processed), "evaluate_params": fingerprint(params.model_dump())}
    what = {"data_version": f"{processed} changed", "model_sha256": "its model.pt changed (or is missing)",
            "evaluate_params": "the evaluate settings changed"}
    stale = {}
    for name in models:
        recorded = read_json(Path(metrics_root) / name / "eval.json").get("inputs")
        model_path = Path(models_root) / name / "model.pt"
        if not isinstance(recorded, dict):
            stale[name] = "eval.json records no inputs (written by an older lungxray)"
            continue
        now = {**current, "model_sha256": sha256_file(model_path) if model_path.exists() else None}
        changed = [what[k] for k in what if recorded.get(k) != now[k]]
        if changed:
            stale[name] = ", ".join(changed) + " since it was evaluated"
    return stale


# ---------------------------------------------------------------------------------------------------------------------
# compare


def leaderboard_rows(models: list[str], metrics_root: Path) -> list[dict]:
    rows = []
    for name in models:
        d = Path(metrics_root) / name
        if not (d / "eval.json").exists() or not (d / "train.json").exists():
            raise LungxrayError(f"no metrics for {name} in {d}: run `dvc repro` (train@{name}, evaluate@{name})")
        e = json.loads((d / "eval.json").read_text())
        t = json.loads((d / "train.json").read_text())
        rows.append({
            "model": name,
            **{f"{split}_{k}{s}": (e[split] or {}).get(f"{k}{s}") for split in ("test", "val")
               for k in ("macro_recall", "accuracy", "macro_auc") for s in ("", "_ci_low", "_ci_high")},
            "trainable_parameters": t["trainable_parameters"], "seconds_per_epoch": t["seconds_per_epoch"],
            "epochs_to_converge": t["epochs_to_converge"], "images_per_s": e["throughput"]["images_per_s"],
            "test_set": e["test_set"], "val_set": e.get("val_set"), "mlflow_run_id": t.get("mlflow_run_id"),
            "mlflow_model_uri": t.get("mlflow_model_uri"),
        })
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# register and promote


def register_and_promote(rows: list[dict], params: PromotionParams, mlflow_params: MlflowParams | None = None,
                         predictions: dict[str, pd.DataFrame] | None = None) -> dict:
    """Register every evaluated model as a new version, then move the aliases by :func:`promote.decide`.

    ``predictions`` (model -> its :func:`load_predictions` table of the selection split) makes the paired comparison
    with the champion possible; the champion's own predictions are found through its version's
    ``predictions_<split>`` tag (an artifact of its training run, logged by evaluate). Versions are registered (and
    waited for) first; aliases are set only after every registration succeeded, so a failure never leaves
    ``champion`` pointing at a half-registered version.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    mlflow = mlflow_setup(mlflow_params or MlflowParams())
    client = MlflowClient()
    name = params.registered_model
    predictions = predictions or {}
    try:
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="lungxray chest X-ray classifiers; aliases champion "
                                                             "and challenger are set by the register stage")
        champion = _current_champion(client, params)
        candidates = []
        for r in rows:
            if not r.get("mlflow_run_id"):
                raise LungxrayError(f"{r['model']} has no MLflow run id in its train metrics: retrain it")
            tags = {k: str(v) for k, v in r.items() if v is not None and k not in ("mlflow_run_id", "mlflow_model_uri")}
            tags.update(_prediction_tags(client, r["mlflow_run_id"]))
            uri = r.get("mlflow_model_uri") or f"runs:/{r['mlflow_run_id']}/model"
            mv = mlflow.register_model(uri, name, tags=tags)
            mv = _wait_ready(client, name, mv.version)
            candidates.append({**r, "version": mv.version, "predictions": predictions.get(r["model"])})
        decision = decide(candidates, champion, params)
        # aliases last, after every version is READY
        after = decision.get("champion_after")
        if decision["promote"] and after:
            client.set_registered_model_alias(name, "champion", after["version"])
        chal = decision.get("challenger_after")
        if chal:
            client.set_registered_model_alias(name, "challenger", chal["version"])
    except MlflowException as e:
        raise LungxrayError(f"the MLflow model registry failed ({e}); aliases were not changed") from None
    decision["registered_model"] = name
    decision["registered_versions"] = [{"model": c["model"], "version": c["version"]} for c in candidates]
    decision["load_with"] = f"mlflow.pyfunc.load_model('models:/{name}@champion')"
    return decision


def _prediction_tags(client, run_id: str) -> dict[str, str]:
    """``predictions_<split>``: where the run's per-image predictions are (only those evaluate logged)."""
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    return {f"predictions_{s}": f"runs:/{run_id}/evaluation/predictions_{s}.csv" for s in EVAL_SPLITS
            if f"evaluation/predictions_{s}.csv" in logged}


def _current_champion(client, params: PromotionParams) -> dict | None:
    """The version with the alias ``champion`` as a candidate dict (with its predictions when they can be found)."""
    from mlflow.exceptions import MlflowException

    try:
        v = client.get_model_version_by_alias(params.registered_model, "champion")
    except MlflowException:
        return None
    split = selection_split(params)
    return {"model": v.tags.get("model"), "version": v.version,
            params.metric: float(v.tags[params.metric]) if params.metric in v.tags else None,
            "trainable_parameters": float(v.tags.get("trainable_parameters", "nan")),
            "test_set": v.tags.get("test_set"), "val_set": v.tags.get("val_set"),
            "predictions": _logged_predictions(v.tags.get(f"predictions_{split}"))}


def _logged_predictions(uri: str | None) -> pd.DataFrame | None:
    """A predictions table logged to MLflow, or None (logged, with the reason) when it cannot be had."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not uri:
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
            return pd.read_csv(path, keep_default_na=False, dtype={"id": str, "unit": str, "label": str})
    except (MlflowException, OSError, ValueError) as e:
        log.warning("the champion's predictions at %s cannot be read (%s): no paired comparison", uri, e)
        return None


def _wait_ready(client, name: str, version: str, timeout_s: float = 120.0):
    import time

    from mlflow.entities.model_registry.model_version_status import ModelVersionStatus

    deadline = time.monotonic() + timeout_s
    while True:
        mv = client.get_model_version(name, version)
        status = ModelVersionStatus.from_string(mv.status)
        if status == ModelVersionStatus.READY:
            return mv
        if status == ModelVersionStatus.FAILED_REGISTRATION or time.monotonic() > deadline:
            raise LungxrayError(f"registering {name} version {version} failed ({mv.status}: {mv.status_message}); "
                                f"aliases were not changed")
        time.sleep(0.5)


def predict_images(model_uri: str, images: np.ndarray, mean, std) -> np.ndarray:
    """Predict class probabilities for uint8 greyscale images (N, S, S) with a logged/registered model; ``mean``/``std``
    per channel (the model's metadata has them) or one value for all three."""
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    m, s = (np.asarray(v, dtype=np.float32).reshape(1, -1, 1, 1) for v in (mean, std))
    x = np.ascontiguousarray(np.broadcast_to((images.astype(np.float32) / 255.0)[:, None] - m,
                                             (len(images), 3, *images.shape[1:])) / s)
    logits = np.asarray(model.predict(x))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
