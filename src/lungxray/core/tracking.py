"""MLflow runs in one place: the tracking store (:func:`mlflow_setup`), what a training run logs (its datasets), what
the evaluate stage adds to that run (metrics, plots, per-image predictions), and the runs of the shortcut check and of
the external folds. The pyfunc models are logged by the register stage (:mod:`lungxray.serve.mlflow_models`); the
registry look-ups are in :mod:`lungxray.registry.versions`.

mlflow is imported on first use (it takes seconds), so importing this module stays fast.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
from pydantic import Field

from lungxray.core import schema
from lungxray.core.config import Strict
from lungxray.core.errors import LungxrayError

log = logging.getLogger(__name__)


DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


class MlflowParams(Strict):
    experiment: str = Field("lungxray", description="MLflow experiment the runs are logged to (created if missing)")
    tracking_uri: str | None = Field(None, description="used when $MLFLOW_TRACKING_URI is unset (the environment "
                                                        "wins: a team server); default sqlite:///mlruns/mlflow.db")
    artifact_dir: str = Field("mlruns/artifacts", description="artifacts of a new experiment in a local store (a "
                                                             "server keeps its own: --serve-artifacts)")


# ---------------------------------------------------------------------------------------------------------------------
# the tracking store and the training run


def tracking_uri(mp: MlflowParams) -> str:
    """``$MLFLOW_TRACKING_URI`` first (a team server set per shell or CI job), then params, then the local store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or mp.tracking_uri or DEFAULT_TRACKING_URI


def set_tracking_uri(mlflow, uri: str) -> None:
    """``mlflow.set_tracking_uri`` without its side effect on ``$MLFLOW_TRACKING_URI`` (it exports the URI for
    subprocesses): left there, the URI of one call would win over the params of every later call in this process,
    since the environment is the user's way to name a team server (:func:`tracking_uri`)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def mlflow_setup(mp: MlflowParams):
    """Point mlflow at the tracking store and the experiment, creating it when new: in a local store its artifacts
    go to ``artifact_dir``; a tracking server (http/https) chooses where they go (served artifacts: uploaded
    through the server, never written to a path of this machine)."""
    import mlflow

    uri = tracking_uri(mp)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    set_tracking_uri(mlflow, uri)
    try:
        exp = mlflow.get_experiment_by_name(mp.experiment)
        if exp is None and uri.startswith(("http://", "https://")):
            mlflow.create_experiment(mp.experiment)
        elif exp is None:
            art = Path(mp.artifact_dir).resolve()
            art.mkdir(parents=True, exist_ok=True)
            mlflow.create_experiment(mp.experiment, artifact_location=art.as_uri())
        mlflow.set_experiment(mp.experiment)
    except Exception as e:
        raise LungxrayError(f"cannot reach the MLflow tracking store {uri}: {e}. Unset MLFLOW_TRACKING_URI to use "
                            f"the local store under mlruns/, or start that server.") from None
    return mlflow


DATASET_CONTEXTS = {"train": "training", "val": "validation"}  # the processed splits a training run learns from


def log_datasets(mlflow, processed: Path, version: str) -> None:
    """The processed train and val splits as the active run's dataset inputs (the Dataset column of ``mlflow ui``):
    their index rows, named ``processed/<split>``, with the data version as digest."""
    index = pd.read_csv(processed / "index.csv", keep_default_na=False, dtype=str)
    source = mlflow.data.sources.LocalArtifactDatasetSource(str(processed.resolve()))  # named: no guessing, no warning
    for split, context in DATASET_CONTEXTS.items():
        rows = index[index.split == split].reset_index(drop=True)
        dataset = mlflow.data.from_pandas(rows, source=source, targets="label", name=f"processed/{split}",
                                          digest=version)
        mlflow.log_input(dataset, context=context)


# ---------------------------------------------------------------------------------------------------------------------
# evaluation and registry


def log_evaluation(run_id: str, out: dict, results: dict, metrics_dir: Path, reports_dir: Path,
                    mlflow_params: MlflowParams | None) -> None:
    """Metrics, plots and per-image predictions into the model's training run (the registry finds them there)."""
    mlflow = mlflow_setup(mlflow_params or MlflowParams())
    with mlflow.start_run(run_id=run_id):
        flat = {f"{split}/{k}": v for split in schema.EVAL_SPLITS if out[split] is not None
                for k, v in out[split].items() if isinstance(v, (int, float)) and v is not None}
        flat["inference/images_per_s"] = out["throughput"]["images_per_s"]
        flat["inference/latency_ms_median"] = out["throughput"]["latency_ms_median"]
        mlflow.log_metrics({k.replace("/n_samples", "/images"): float(v) for k, v in flat.items()})
        for f in ("confusion_matrix.png", "roc.png", "reliability.png", "gradcam.png", "classification_report.txt",
                  "evaluation.md"):
            if (reports_dir / f).exists():
                mlflow.log_artifact(str(reports_dir / f), artifact_path="evaluation")
        for split in schema.EVAL_SPLITS:
            mlflow.log_artifact(str(metrics_dir / f"predictions_{split}.csv"), artifact_path="evaluation")
        if "test" in results:
            mlflow.log_dict(results["test"][2], "evaluation/test_metrics.json")
        mlflow.set_tags({"test_set": out["test_set"], "val_set": out["val_set"]})


# ---------------------------------------------------------------------------------------------------------------------
# the shortcut check


def log_shortcut_check(report: dict, files: list[Path], mlflow_params: MlflowParams | None) -> str:
    """One run in the experiment, tagged ``stage=shortcut``: the probe's figures, the label concentration, whether
    the warning fired, and the report files. Returns the run id."""
    mlflow = mlflow_setup(mlflow_params or MlflowParams())
    probe, warning = report.get("probe") or {}, report["warning"]
    figures = {f"probe/{k}": probe.get(k) for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high",
                                                     "majority_rate", "uniform_rate")}
    figures["labels/cramers_v"] = report["labels"]["cramers_v"]
    with mlflow.start_run(run_name="shortcut-check") as run:
        mlflow.set_tags({"stage": "shortcut", "shortcut_warning": str(warning["fires"]).lower(),
                         "skipped": report.get("skipped") or ""})
        mlflow.log_params({f"shortcut.{k}": v for k, v in report["params"].items()})
        mlflow.log_metrics({k: float(v) for k, v in figures.items() if v is not None})
        for f in files:
            mlflow.log_artifact(str(f), artifact_path="shortcut")
    return run.info.run_id


def log_external_fold(run_id: str, model: str, held_out: str, result: dict, artifacts: list[Path],
                      mlflow_params: MlflowParams) -> None:
    """A leave-one-source-out fold model's training run becomes its fold's run: tagged ``stage: external`` and
    ``held_out_source``, named ``external/<source>/<model>``, with its figures on the held-out source
    (``external/*``) and ``artifacts`` (its predictions, the fold's index) under ``external/``."""
    mlflow = mlflow_setup(mlflow_params)
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tags({"stage": "external", "held_out_source": held_out, "model": model,
                         "mlflow.runName": f"external/{held_out}/{model}"})
        flat = {f"external/{k}": float(v) for k, v in result.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None}
        flat.update({f"external/{c}/{k}": float(v) for c, d in result.get("per_class", {}).items()
                     for k, v in d.items() if isinstance(v, (int, float)) and v is not None})
        mlflow.log_metrics(flat)
        for path in artifacts:
            mlflow.log_artifact(str(path), artifact_path="external")
