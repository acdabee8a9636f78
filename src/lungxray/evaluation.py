"""Orchestration of the evaluate, compare and register stages (the pure metric/decision code lives in
:mod:`lungxray.evaluate`, :mod:`lungxray.promote` and :mod:`lungxray.gate`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import evaluate as ev
from .errors import LungxrayError
from .io import write_csv, write_json
from .preprocess import load_split
from .promote import PromotionParams, decide
from .train import MlflowParams, data_version, load_trained, mlflow_setup


def fingerprint_test_set(processed: Path) -> str:
    """Identifies the test split (ids and labels), so champion and challengers are compared on the same images."""
    index = pd.read_csv(Path(processed) / "index.csv", keep_default_na=False)
    test = index[index.split == "test"].sort_values("id")
    h = hashlib.sha256("\n".join(f"{i}\t{l}" for i, l in zip(test.id, test.label)).encode())
    return h.hexdigest()[:16]


def _short(m: dict) -> dict:
    keys = ("n_samples", "accuracy", "macro_recall", "macro_precision", "macro_f1", "macro_auc", "ece")
    return {k: m.get(k) for k in keys}


def evaluate_model(name: str, processed: Path, model_path: Path, metrics_dir: Path, reports_dir: Path,
                   params: ev.EvaluateParams, train_metrics: dict | None = None,
                   mlflow_params: MlflowParams | None = None) -> dict:
    """Evaluate one trained model on the test and val splits; write metrics, plots and plot data."""
    processed, metrics_dir, reports_dir = Path(processed), Path(metrics_dir), Path(reports_dir)
    model, ck = load_trained(model_path)
    current = data_version(processed)
    trained_on = ck["config"]["data"]["version"]
    if trained_on != current:
        raise LungxrayError(
            f"{model_path} is stale: it was trained on data version {trained_on}, the preprocessed data is now "
            f"{current}. Rerun `dvc repro` so that train@{name} runs again before evaluating.")
    classes = ck["classes"]
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the same command on a GPU machine or a CPU
    stats = json.loads((processed / "stats.json").read_text())
    if stats["classes"] != classes:
        raise LungxrayError(f"{model_path} predicts {classes} but the data has classes {stats['classes']}")
    index = pd.read_csv(processed / "index.csv", keep_default_na=False)
    out: dict = {"model": name, "classes": classes, "test_set": fingerprint_test_set(processed)}
    warnings: list[str] = []
    results: dict[str, tuple] = {}
    for split in ("test", "val"):
        x, y = load_split(processed, split)
        if len(y) == 0:
            if split == "test" and params.allow_empty_test:
                out["test"] = None
                warnings.append("the test split is empty (held back): only validation metrics are reported")
                continue
            raise LungxrayError(f"the {split} split is empty: nothing to evaluate (check split.ratios, or set "
                                f"evaluate.allow_empty_test when the test split is held back on purpose)")
        absent = [c for i, c in enumerate(classes) if not (y == i).any()]
        if absent:
            warnings.append(f"{split}: no image of class(es) {absent}: their sensitivity and AUC are undefined "
                            f"(reported as null); macro averages use the classes present")
        probs = ev.predict_proba(model, x, ck["mean"], ck["std"], batch_size=params.batch_size, device=device)
        m = ev.compute_metrics(y, probs, classes, params)
        sources = index[index.split == split].sort_values("row").source.astype(str).tolist()
        by_source = ev.metrics_by_source(y, probs, sources, classes, params)
        out[split] = ev.summary(m)
        out[split]["by_source"] = {s: _short(v) for s, v in by_source.items()}
        results[split] = (y, probs, m)
    # plots of the test split (of val when the test split is held back), for people (PNG) and for dvc plots (CSV)
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
    full_test = results["test"][2] if "test" in results else None
    out["warnings"] = warnings
    out["throughput"] = ev.measure_throughput(model, stats["image_size"], batch_size=params.batch_size,
                                              device=device, n_batches=params.latency_batches)
    model.cpu()
    write_json(metrics_dir / "eval.json", out)

    run_id = (train_metrics or {}).get("mlflow_run_id")
    if run_id:
        mlflow = mlflow_setup(mlflow_params or MlflowParams())
        with mlflow.start_run(run_id=run_id):
            flat = {f"{split}/{k}": v for split in ("test", "val") if out[split] is not None
                    for k, v in out[split].items() if isinstance(v, (int, float)) and v is not None}
            flat["inference/images_per_s"] = out["throughput"]["images_per_s"]
            flat["inference/latency_ms_median"] = out["throughput"]["latency_ms_median"]
            mlflow.log_metrics({k.replace("/n_samples", "/images"): float(v) for k, v in flat.items()})
            for f in ("confusion_matrix.png", "roc.png", "reliability.png", "classification_report.txt"):
                if (reports_dir / f).exists():
                    mlflow.log_artifact(str(reports_dir / f), artifact_path="evaluation")
            if full_test is not None:
                mlflow.log_dict(full_test, "evaluation/test_metrics.json")
            mlflow.set_tag("test_set", out["test_set"])
    return out


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
            "test_set": e["test_set"], "mlflow_run_id": t.get("mlflow_run_id"),
            "mlflow_model_uri": t.get("mlflow_model_uri"),
        })
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# register and promote


def register_and_promote(rows: list[dict], params: PromotionParams, mlflow_params: MlflowParams | None = None) -> dict:
    """Register every evaluated model as a new version, then move the aliases by :func:`promote.decide`.

    Versions are registered (and waited for) first; aliases are set only after every registration succeeded, so a
    failure never leaves ``champion`` pointing at a half-registered version.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    mlflow = mlflow_setup(mlflow_params or MlflowParams())
    client = MlflowClient()
    name = params.registered_model
    try:
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="lungxray chest X-ray classifiers; aliases champion "
                                                             "and challenger are set by the register stage")
        champion = None
        try:
            v = client.get_model_version_by_alias(name, "champion")
            champion = {"model": v.tags.get("model"), "version": v.version,
                        params.metric: float(v.tags[params.metric]) if params.metric in v.tags else None,
                        "trainable_parameters": float(v.tags.get("trainable_parameters", "nan")),
                        "test_set": v.tags.get("test_set")}
        except MlflowException:
            pass
        candidates = []
        for r in rows:
            if not r.get("mlflow_run_id"):
                raise LungxrayError(f"{r['model']} has no MLflow run id in its train metrics: retrain it")
            tags = {k: str(v) for k, v in r.items() if v is not None and k not in ("mlflow_run_id", "mlflow_model_uri")}
            uri = r.get("mlflow_model_uri") or f"runs:/{r['mlflow_run_id']}/model"
            mv = mlflow.register_model(uri, name, tags=tags)
            mv = _wait_ready(client, name, mv.version)
            candidates.append({**r, "version": mv.version})
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
