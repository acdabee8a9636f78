"""The report in MLflow: an artifact (``report/report.html``) of the MLflow run of the champion's registered version
(``reports/promotion.json``: ``registered_model`` and ``champion_after.version``), and that version's description
links it. A rebuilt report replaces the artifact and the link; the rest of the description is kept."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from lungxray.core.errors import LungxrayError
from lungxray.core.tracking import MlflowParams, mlflow_setup

__all__ = ["publish_report", "ARTIFACT_DIR", "LINK_PREFIX"]

log = logging.getLogger(__name__)

ARTIFACT_DIR = "report"
LINK_PREFIX = "Run report:"  # the description line this module owns


def describe(description: str | None, uri: str, artifact_uri: str) -> str:
    """``description`` with its report line replaced by (or ended with) the link to ``uri``."""
    kept = [line for line in (description or "").splitlines() if not line.startswith(LINK_PREFIX)]
    while kept and not kept[-1].strip():
        kept.pop()
    link = f"{LINK_PREFIX} [{uri}]({artifact_uri}) (self-contained HTML: download and open in a browser)"
    return "\n".join(kept + ([""] if kept else []) + [link])


def publish_report(html_file: str | Path, promotion: dict, mlflow_params: MlflowParams | None = None) -> dict | None:
    """Log ``html_file`` to the champion version's run and link it from the version's description; returns
    ``{registered_model, version, run_id, uri}``, or None when the registry names no champion."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, after = promotion.get("registered_model"), promotion.get("champion_after") or {}
    if not name or not after.get("version"):
        log.warning("reports/promotion.json names no champion version: the report is not logged to MLflow")
        return None
    mlflow_setup(mlflow_params or MlflowParams())
    client = MlflowClient()
    try:
        mv = client.get_model_version(name, str(after["version"]))
        client.log_artifact(mv.run_id, str(html_file), artifact_path=ARTIFACT_DIR)
        uri = f"runs:/{mv.run_id}/{ARTIFACT_DIR}/{Path(html_file).name}"
        artifact_uri = re.sub(r"/+$", "", client.get_run(mv.run_id).info.artifact_uri) + \
            f"/{ARTIFACT_DIR}/{Path(html_file).name}"
        client.update_model_version(name, mv.version, description=describe(mv.description, uri, artifact_uri))
    except MlflowException as e:
        raise LungxrayError(f"logging the report to MLflow failed ({e}): {html_file} is written; check the "
                            f"tracking store (train.mlflow, $MLFLOW_TRACKING_URI) and rerun `dvc repro report`"
                            ) from None
    return {"registered_model": name, "version": str(mv.version), "run_id": mv.run_id, "uri": uri}
