"""The pyfunc models in MLflow: a trained model (:mod:`lungxray.serve.image_model`) or the ensemble
(:mod:`lungxray.serve.ensemble_model`) logged into its own training run, with the ``lungxray`` package as its code, a
signature, an input example, its input contract as metadata and the library versions it was trained with.

Each is logged as a model from code: its model is a file of the package (:data:`MODEL_FILES`: ``pyfunc_image.py``,
``pyfunc_ensemble.py``) that builds the classifier with ``mlflow.models.set_model``, never a CloudPickle of a Python
object, which could run any code when loaded and ties the model to the pickling process's classes. While logging,
MLflow loads the logged model and answers the input example (a failure there is a warning in the log).

The register stage logs them (:func:`logged_model_uri`), not the train stage: the train stage's code then holds no
serving code, so an edit to serving or Grad-CAM never retrains a model. A run keeps the URI of its logged model in
the tag :data:`MODEL_URI_TAG`, so a rerun of register logs nothing twice.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

MODEL_URI_TAG = "lungxray.model_uri"  # a run's tag: the URI of the pyfunc model logged into it
MODEL_FILES = {"image": "pyfunc_image.py", "ensemble": "pyfunc_ensemble.py"}  # the model files, in this package


def model_file_of(kind: str) -> str:
    """The path of the model file (models from code) of a ``kind`` of model, ``image`` or ``ensemble``."""
    return str(Path(__file__).with_name(MODEL_FILES[kind]))


def model_requirements() -> list[str]:
    """The libraries the logged model needs, pinned to the versions it was trained with."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for lib in ("torch", "torchvision", "timm", "mlflow", "numpy", "pandas", "pillow", "pydicom", "pydantic"):
        try:
            reqs.append(f"{lib}=={version(lib).split('+')[0]}")
        except PackageNotFoundError:  # pragma: no cover
            pass
    return reqs


def package_code(folder: Path) -> str:
    """A copy of the ``lungxray`` package under ``folder`` (the model's code: it loads outside the repository)."""
    code = Path(folder) / "code" / "lungxray"
    shutil.copytree(Path(__file__).resolve().parents[1], code, ignore=shutil.ignore_patterns("__pycache__"))
    return str(code)


def log_image_model(mlflow, model_file: Path):
    """Log a trained model (its model.pt) as the lungxray image model in the active run: images in, class
    probabilities out; its input contract (classes, image size, preprocessing, normalisation, accepted inputs) as
    metadata."""
    from lungxray.serve.image_model import input_example, signature
    from lungxray.serve.predictor import MODEL_ARTIFACT, predictor_from_file

    contract = predictor_from_file(model_file, device="cpu").contract()
    with tempfile.TemporaryDirectory() as tmp:
        return mlflow.pyfunc.log_model(name="model", python_model=model_file_of("image"),
                                       artifacts={MODEL_ARTIFACT: str(model_file)}, code_paths=[package_code(tmp)],
                                       signature=signature(contract["classes"]), input_example=input_example(),
                                       pip_requirements=model_requirements(),
                                       metadata={**contract, "model_file": f"artifacts/{MODEL_ARTIFACT}"})


def log_ensemble_model(mlflow, names: list[str], model_files: list[Path]):
    """Log the ensemble as a pyfunc model in the active run: the members' model.pt files, the manifest, the
    ``lungxray`` package as its code, the single model's signature and, as metadata, its contract."""
    from lungxray.serve.ensemble_model import MANIFEST, ensemble_predictor_from_manifest
    from lungxray.serve.image_model import input_example, signature

    with tempfile.TemporaryDirectory() as tmp:
        files = {n: f"{n}.pt" for n in names}
        for n, src in zip(names, model_files):
            shutil.copyfile(src, Path(tmp) / files[n])
        manifest = Path(tmp) / MANIFEST
        manifest.write_text(json.dumps({"members": names, "files": files, "combine": "mean"}, indent=2))
        predictor = ensemble_predictor_from_manifest(manifest, device="cpu")
        artifacts = {MANIFEST: str(manifest), **{f"member_{n}": str(Path(tmp) / f) for n, f in files.items()}}
        return mlflow.pyfunc.log_model(name="model", python_model=model_file_of("ensemble"), artifacts=artifacts,
                                       code_paths=[package_code(tmp)], signature=signature(predictor.classes),
                                       input_example=input_example(), pip_requirements=model_requirements(),
                                       metadata={**predictor.contract(), "manifest": f"artifacts/{MANIFEST}"})


def logged_model_uri(mlflow, run_id: str, model_files: list[Path], members: list[str] | None = None) -> str:
    """The URI of the pyfunc model in the MLflow run ``run_id``: the one its tag names, else the model logged now
    (``model_files``: one model.pt; an ensemble's ``members`` and their model.pt files)."""
    from mlflow.tracking import MlflowClient

    uri = MlflowClient().get_run(run_id).data.tags.get(MODEL_URI_TAG)
    if uri:
        return uri
    with mlflow.start_run(run_id=run_id):
        if members:
            uri = log_ensemble_model(mlflow, members, model_files).model_uri
        else:
            uri = log_image_model(mlflow, model_files[0]).model_uri
        mlflow.set_tag(MODEL_URI_TAG, uri)
    return uri
