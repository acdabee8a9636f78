"""``lungxray predict``: classify image files with a trained model (the shared core: :mod:`lungxray.serve.predictor`).

* :func:`load_predictor` takes ``models:/<name>@<alias>`` (or any MLflow model URI of a lungxray image model), a
  ``models/<model>`` folder or a ``model.pt`` file; with none, the champion of the configured registry.
* :func:`predict_files` classifies files in batches (on the GPU when present) and returns one row per file: the
  predicted class and one ``prob_<class>`` column per class, or, for a file that cannot be used, the reason in
  ``error`` (the batch goes on). ``on_batch`` receives every classified batch
  (:class:`~lungxray.serve.predictor.PredictedBatch`: the trained model, the square uint8 images, the predicted
  indices, the probabilities and the files; an ensemble's :class:`~lungxray.serve.ensemble_model.EnsembleBatch`),
  which is where per-image extras such as Grad-CAM overlays hook in (``batch.heatmaps()``).
* :func:`~lungxray.serve.predictor.apply_operating_point` adds the decision of one of the model's operating points
  (chosen on val: :mod:`lungxray.models.calibration`): ``argmax`` (the default) is the ``predicted`` column itself;
  ``<class>@sens95`` or ``<class>@youden`` adds a column of that name, true when ``prob_<class> >= threshold`` (empty
for unusable files). """

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd

from lungxray.core.errors import LungxrayError
from lungxray.serve.predictor import (
    ERROR,
    MODEL_ARTIFACT,
    PREDICTED,
    PredictedBatch,
    Predictor,
    classify,
    predictor_from_file,
    prob_column,
)

MODEL_FILE = "model.pt"
FILE = "file"


def configured_registry(params_file: str | Path = "params.yaml") -> tuple[str, str]:
    """(tracking URI, registered model name) the pipeline uses: params.yaml's ``train.mlflow`` and ``promote``
    sections when the file exists (``$MLFLOW_TRACKING_URI`` or the local store otherwise), else the defaults."""
    import os

    from lungxray.compare.promote import PromotionParams
    from lungxray.core.tracking import DEFAULT_TRACKING_URI, MlflowParams

    name, mp = PromotionParams().registered_model, MlflowParams()
    if Path(params_file).is_file():
        from lungxray.core.config import load_sections
        from lungxray.train.settings import TrainParams

        p = load_sections({"train": TrainParams, "promote": PromotionParams}, params_file)
        name, mp = p.promote.registered_model, p.train.mlflow
    return mp.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI, name


def champion_uri(params_file: str | Path = "params.yaml") -> str:
    """``models:/<registered model>@champion`` of the configured registry (:func:`configured_registry`), when that
    champion exists; otherwise a :class:`LungxrayError` that says what to pass instead."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri, name = configured_registry(params_file)
    missing_store = uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file()
    try:
        if missing_store:
            raise MlflowException("no store")
        MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(name, "champion")
    except MlflowException:
        raise LungxrayError(f"no champion of {name!r} in the registry {uri}: pass --model models:/<name>@champion "
                            f"(with MLFLOW_TRACKING_URI set to its store) or --model models/<model> (a trained "
                            f"model folder)") from None
    return f"models:/{name}@champion"


def input_limits(params_file: str | Path = "params.yaml", max_pixels: int | None = None) -> dict:
    """What ``lungxray predict`` refuses, as the pipeline would (:func:`~lungxray.serve.predictor.set_input_limits`):
    images over ``max_pixels`` (given, else params.yaml's ``fetch.max_pixels``) and below the ``validate`` section's
    ``min_width`` / ``min_height``; a setting params.yaml does not hold (or no params.yaml) keeps its default."""
    from lungxray.core.config import parse_sections, read_params_file

    data = read_params_file(params_file) if Path(params_file).is_file() else {}
    limits = {}
    if "validate" in data:
        from lungxray.data.validate.params import ValidateParams

        v = parse_sections(data, {"validate": ValidateParams}, str(params_file)).validate
        limits.update(min_width=v.min_width, min_height=v.min_height)
    if max_pixels is None and "fetch" in data:
        from lungxray.core.config import FetchParams

        max_pixels = parse_sections(data, {"fetch": FetchParams}, str(params_file)).fetch.max_pixels
    return limits if max_pixels is None else {**limits, "max_pixels": max_pixels}


def load_predictor(ref: str | Path | None = None, device: str = "auto") -> Predictor:
    """A :class:`Predictor` from an MLflow model URI (``models:/name@champion``, ``runs:/...``), a ``models/<model>``
    folder or a ``model.pt`` file; ``None``: the champion of the configured registry."""
    ref = champion_uri() if ref is None else ref
    path = Path(str(ref))
    if path.is_dir() and (path / MODEL_FILE).is_file():
        return predictor_from_file(path / MODEL_FILE, device)
    if path.is_file():
        return predictor_from_file(path, device)
    if "://" not in str(ref) and not str(ref).startswith("models:/"):
        raise LungxrayError(f"no model at {ref}: pass models:/<name>@champion or a models/<model> folder that holds "
                            f"a model.pt (train it with `dvc repro`)")
    return _predictor_from_mlflow(str(ref), device)


def _predictor_from_mlflow(uri: str, device: str) -> Predictor:
    import mlflow
    from mlflow.exceptions import MlflowException

    from lungxray.core.tracking import set_tracking_uri

    set_tracking_uri(mlflow, configured_registry()[0])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except (MlflowException, OSError) as e:
            raise LungxrayError(f"cannot load {uri} ({' '.join(str(e).split())[:200]}): check the name and alias, "
                                f"and MLFLOW_TRACKING_URI") from None
        model_pt = local / "artifacts" / MODEL_ARTIFACT
        if (local / "artifacts" / "ensemble.json").is_file():  # a registered ensemble (lungxray.serve.ensemble_model)
            from lungxray.serve.ensemble_model import ensemble_predictor_from_manifest

            p = ensemble_predictor_from_manifest(local / "artifacts" / "ensemble.json", device)
        elif not model_pt.is_file():
            raise LungxrayError(f"{uri} is not a lungxray image model (no artifacts/{MODEL_ARTIFACT}): it was "
                                f"registered by an older version that logged a bare torch model; retrain and "
                                f"register it (dvc repro)")
        else:
            p = predictor_from_file(model_pt, device)
    p.source = uri
    return p


# ----------------------------------------------------------------------------------------------------------------------
# files in, one row per file out


def find_files(paths: Iterable[str | Path], skipped: list[tuple[Path, str]] | None = None) -> list[Path]:
    """The files named, and every file under the folders named, in order: recursively, hidden files and folders left
    out, linked folders followed (their files keep the path through the link). A folder reached a second time (a
    link that loops back up, or two ways to one folder) is searched once: the other ways are added to ``skipped``
    with the reason, as is a folder that cannot be listed (``lungxray predict`` prints them). A missing file, a
    broken link included, is kept: it gets its row (cannot read)."""
    out: list[Path] = []
    skipped = [] if skipped is None else skipped
    for p in map(Path, paths):
        out += _files_under(p, skipped) if p.is_dir() else [p]
    return out


def _files_under(root: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """The files under ``root`` (see :func:`find_files`); a folder is known by its device and inode, so a loop
    through links is seen before it is entered."""
    import os

    def identity(path: str) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    searched = {identity(str(root))}
    files: list[Path] = []
    walk = os.walk(root, followlinks=True, onerror=lambda e: skipped.append(
        (Path(e.filename), f"cannot list it: {e.strerror or e}")))
    for folder, dirs, names in walk:
        keep = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            path = os.path.join(folder, d)
            try:
                key = identity(path)
            except OSError as e:
                skipped.append((Path(path), f"cannot list it: {e.strerror or e}"))
                continue
            if key in searched:
                what = f"a link to {os.path.realpath(path)}" if os.path.islink(path) else "a folder reached by a link"
                skipped.append((Path(path), f"{what}, a folder already searched"))
                continue
            searched.add(key)
            keep.append(d)
        dirs[:] = keep
        files += [Path(folder, n) for n in names if not n.startswith(".")
                  and (os.path.isfile(os.path.join(folder, n)) or not os.path.exists(os.path.join(folder, n)))]
    return sorted(files)


def predict_files(files: Sequence[str | Path], predictor: Predictor, progress: bool = False,
                  on_batch: Callable[[PredictedBatch], None] | None = None) -> pd.DataFrame:
    """One row per file (``file``, ``predicted``, ``prob_<class>``..., ``error``), in batches of
    ``predictor.batch_size``; a file that cannot be used gets its reason in ``error``."""
    from lungxray.core.io import progress_bar

    files = [str(f) for f in files]
    rows: list[dict] = []
    starts = range(0, len(files), predictor.batch_size)
    with progress_bar(total=len(files), desc="predict", unit="img", disable=not progress, mininterval=1.0) as bar:
        for start in starts:
            chunk = files[start:start + predictor.batch_size]
            rows += classify(predictor, chunk, chunk, on_batch)
            bar.update(len(chunk))
    columns = [FILE, PREDICTED, *map(prob_column, predictor.classes), ERROR]
    return pd.DataFrame([{FILE: f, **r} for f, r in zip(files, rows)], columns=columns)


def cam_writer(out_dir: str | Path, predictor: Predictor, files: Sequence[str | Path]
               ) -> Callable[[PredictedBatch], None]:
    """An ``on_batch`` for :func:`predict_files` that writes one Grad-CAM overlay per classified image
    (:mod:`lungxray.evaluate.gradcam`): ``out_dir/<path relative to the inputs' common folder>.png`` (``a/b.dcm`` ->
    ``a/b.dcm.png``), showing the X-ray, its heat map for the predicted class, that class and its probability."""
    import os

    from lungxray.evaluate.gradcam import write_overlays

    paths = [Path(os.path.abspath(f)) for f in files]  # not resolved: a file in a linked folder stays under it
    root = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path(".")

    def write(batch: PredictedBatch) -> None:
        heats = batch.heatmaps()  # an ensemble's: the mean of its members' maps for its class
        names = [Path(os.path.abspath(f)).relative_to(root).as_posix() for f in batch.files]  # + .png
        titles = [f"{batch.classes[k]} {p[k]:.2f}" for k, p in zip(batch.predicted, batch.probs)]
        write_overlays(out_dir, names, batch.images, heats, titles)

    return write
