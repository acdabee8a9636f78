"""The registry look-ups of the register stage: the current champion (with its logged predictions), the versions an
MLflow run already has, where a run's predictions are, and waiting for a version to be READY."""

from __future__ import annotations

import logging
import tempfile

import pandas as pd

from lungxray.core import schema
from lungxray.core.errors import LungxrayError

log = logging.getLogger(__name__)


def current_champion(client, registered_model: str, metric: str, split: str) -> dict | None:
    """The version of ``registered_model`` with the alias ``champion`` as a candidate dict: its ``metric`` (a tag) and,
    when they can be found, its logged predictions of ``split``."""
    from mlflow.exceptions import MlflowException

    try:
        v = client.get_model_version_by_alias(registered_model, "champion")
    except MlflowException:
        return None
    return {"model": v.tags.get("model"), "version": v.version, "mlflow_run_id": v.run_id,
            metric: float(v.tags[metric]) if metric in v.tags else None,
            "trainable_parameters": float(v.tags.get("trainable_parameters", "nan")),
            "test_set": v.tags.get("test_set"), "val_set": v.tags.get("val_set"),
            "predictions": logged_predictions(v.tags.get(f"predictions_{split}"))}


def run_versions(client, registered_model: str, run_id: str, model: str) -> list:
    """The versions of ``registered_model`` registered from the MLflow run ``run_id`` for ``model`` (their ``model``
    tag), oldest first; those whose registration failed left out."""
    from mlflow.entities.model_registry.model_version_status import ModelVersionStatus

    found = client.search_model_versions(f"run_id='{run_id}'")
    failed = ModelVersionStatus.to_string(ModelVersionStatus.FAILED_REGISTRATION)
    return sorted((v for v in found if v.name == registered_model and v.tags.get("model") == model
                   and v.status != failed), key=lambda v: int(v.version))


def prediction_tags(client, run_id: str) -> dict[str, str]:
    """``predictions_<split>``: where the run's per-image predictions are (only those evaluate logged)."""
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    return {f"predictions_{s}": f"runs:/{run_id}/evaluation/predictions_{s}.csv" for s in schema.EVAL_SPLITS
            if f"evaluation/predictions_{s}.csv" in logged}


def logged_predictions(uri: str | None) -> pd.DataFrame | None:
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


def wait_ready(client, name: str, version: str, timeout_s: float = 120.0):
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
