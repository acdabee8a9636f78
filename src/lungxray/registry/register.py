"""The register stage: every evaluated model becomes a version in the MLflow model registry, then the aliases
``champion`` and ``challenger`` move by the promotion rule (:func:`lungxray.compare.promote.decide`; the registry
look-ups are in :mod:`lungxray.core.tracking`).

Registration is idempotent: the registry holds one version per (MLflow run, model). A model whose run already has a
version (registered by an earlier run of the stage, one that was killed part-way included) gets that version back,
its tags brought up to date, instead of a new one: the champion's own version when it is among them, else the oldest.
So a rerun adds no copy, and no alias can point at a copy of the champion.

Where to see the runs: MLflow 3.17's UI opens an experiment on its GenAI "Overview" page unless the address says
``workflowType=machine_learning`` (or the sidebar's "Model training" switch was set, which the browser remembers);
it decides by that switch alone, not by the experiment (its ``mlflow.experimentKind`` tag is not read for that). So
the stage prints the address of the training runs (:func:`runs_page_url`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lungxray.compare.promote import PromotionParams, decide, selection_split
from lungxray.core import schema
from lungxray.core.errors import LungxrayError
from lungxray.core.tracking import MlflowParams, mlflow_setup, tracking_uri
from lungxray.registry.versions import current_champion, prediction_tags, run_versions, wait_ready
from lungxray.serve.mlflow_models import logged_model_uri

UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` answers by default (a local store has no server)
RUNS_PAGE = "#/experiments/{id}/runs?workflowType=machine_learning"  # the UI's training runs (see the docstring)


def runs_page_url(mp: MlflowParams) -> str:
    """The address of the experiment's training runs in the MLflow UI: on the tracking server, or on ``mlflow ui``
    at its default address for a local store."""
    mlflow = mlflow_setup(mp)
    uri = tracking_uri(mp)
    base = uri if uri.startswith(("http://", "https://")) else UI_ADDRESS
    page = RUNS_PAGE.format(id=mlflow.get_experiment_by_name(mp.experiment).experiment_id)
    return f"{base.rstrip('/')}/{page}"


def load_predictions(models: list[str], metrics_root: Path, split: str) -> dict[str, pd.DataFrame]:
    """Each model's ``predictions_<split>.csv`` (written by evaluate)."""
    out = {}
    for name in models:
        f = Path(metrics_root) / name / f"predictions_{split}.csv"
        if not f.exists():
            raise LungxrayError(f"{f} is missing: rerun `dvc repro` (evaluate@{name} writes it)")
        out[name] = pd.read_csv(f, keep_default_na=False, dtype={"id": str, "unit": str, "label": str})
    return out


def register_and_promote(rows: list[dict], params: PromotionParams, mlflow_params: MlflowParams | None = None,
                         predictions: dict[str, pd.DataFrame] | None = None,
                         models_root: Path = schema.MODELS) -> dict:
    """Register every evaluated model (a new version, or the one its run already has: :func:`model_version`), then
    move the aliases by :func:`promote.decide`. A model to register is first logged as a pyfunc model into its
    training run (:func:`lungxray.serve.mlflow_models.logged_model_uri`, from ``models_root/<model>/model.pt``).

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
        champion = current_champion(client, name, params.metric, selection_split(params))
        candidates = []
        for r in rows:
            if not r.get("mlflow_run_id"):
                raise LungxrayError(f"{r['model']} has no MLflow run id in its train metrics: retrain it")
            tags = {k: str(v) for k, v in r.items() if v is not None and k != "mlflow_run_id"}
            tags.update(prediction_tags(client, r["mlflow_run_id"]))
            mv = model_version(client, mlflow, name, r, tags, champion, Path(models_root))
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


def model_version(client, mlflow, name: str, row: dict, tags: dict[str, str], champion: dict | None,
                  models_root: Path = schema.MODELS):
    """The READY version of ``row``'s model in ``name``: the one its MLflow run already has (the champion's when it
    is one of them, else the oldest), its tags set to ``tags``; else a new version registered with them, from the
    pyfunc model in its run (logged now when it has none)."""
    found = run_versions(client, name, row["mlflow_run_id"], row["model"])
    if found:
        mv = next((v for v in found if champion and str(v.version) == str(champion["version"])), found[0])
        for key, value in tags.items():
            if mv.tags.get(key) != value:
                client.set_model_version_tag(name, mv.version, key, value)
        return wait_ready(client, name, mv.version)
    uri = logged_model_uri(mlflow, row["mlflow_run_id"], *model_files(row, models_root))
    return wait_ready(client, name, mlflow.register_model(uri, name, tags=tags).version)


def model_files(row: dict, models_root: Path) -> tuple[list[Path], list[str] | None]:
    """The model.pt files of a leaderboard row, and the members when it is the ensemble (``ensemble_of``)."""
    members = [m.strip() for m in row["ensemble_of"].split(",")] if row.get("ensemble_of") else None
    files = [Path(models_root) / m / "model.pt" for m in (members or [row["model"]])]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise LungxrayError(f"{', '.join(missing)} missing: the register stage logs each model from its model.pt; "
                            f"rerun `dvc repro` (train@<model> writes it)")
    return files, members
