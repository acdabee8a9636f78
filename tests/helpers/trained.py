"""A small trained cnn5 with an MLflow store of its own (conftest's session fixture ``trained_cnn5``), copies of a
scratch folder that hold an MLflow store (:func:`copy_with_store`) for the tests that change what they were given, and
a :class:`~lungxray.models.trained.TrainedModel` around a network built in a test (:func:`as_trained`)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from lungxray.models.trained import TrainedModel
from lungxray.train.settings import TrainParams

from helpers.processed import make_processed, train_params


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """What the train stage leaves for one model, under ``root``: the processed data it was trained on, its model
    folder (model.pt, checkpoint.pt), its metrics folder (train.json, history.csv), the settings it was trained with
    (their MLflow store is ``root/mlruns``), train_model's result and the URI of its logged MLflow model."""

    root: Path
    params: TrainParams
    train: dict
    model_uri: str

    @property
    def processed(self) -> Path:
        return self.root / "processed"

    @property
    def models(self) -> Path:
        return self.root / "models/cnn5"

    @property
    def model_pt(self) -> Path:
        return self.models / "model.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics/cnn5"

    def copy(self, dest: Path) -> TrainedRun:
        """A copy under ``dest`` (data, model, metrics and the MLflow store) that a test may change."""
        copy_with_store(self.root, dest)
        return dataclasses.replace(self, root=dest, params=train_params(dest, epochs=self.params.epochs))


def train_cnn5(root: Path) -> TrainedRun:
    """cnn5, 3 epochs on :func:`make_processed` (60 train, 24 val, 6 test images of 32 px; split units of two images;
    preprocessed with aspect=stretch and resample=bilinear), logged with its MLflow model."""
    from lungxray.core.tracking import mlflow_setup
    from lungxray.serve.mlflow_models import logged_model_uri
    from lungxray.train.fit import train_model

    processed = make_processed(root)
    index = pd.read_csv(processed / "index.csv")
    index["unit"] = index.split + "/u" + (index.row // 2).astype(str)  # as preprocess writes it: a patient's pair
    index.to_csv(processed / "index.csv", index=False)
    stats = json.loads((processed / "stats.json").read_text())
    (processed / "stats.json").write_text(json.dumps({**stats, "aspect": "stretch", "resample": "bilinear"}))
    params = train_params(root, epochs=3)
    run = TrainedRun(root, params, {}, "")
    t = train_model("cnn5", params, processed, run.models, run.metrics, progress=False)
    uri = logged_model_uri(mlflow_setup(params.mlflow), t["mlflow_run_id"], [run.model_pt])
    return dataclasses.replace(run, train=t, model_uri=uri)


def copy_with_store(src: Path, dest: Path) -> None:
    """Copy the folder ``src`` to ``dest`` (made or added to), with the MLflow SQLite stores in it pointed at the
    copy: every path under ``src`` they record (artifact locations, model sources) names its copy instead."""
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    for db in dest.rglob("*.db"):
        with sqlite3.connect(db) as con:
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for _, column, kind, *_ in con.execute(f'PRAGMA table_info("{table}")').fetchall():
                    if kind.upper().startswith(("VARCHAR", "TEXT")):
                        con.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                                    f'WHERE "{column}" LIKE ?', (str(src), str(dest), f"%{src}%"))


def as_trained(network: torch.nn.Module, architecture: str = "cnn5", mean: float = 0.5, std: float = 0.25,
               classes: Sequence[str] | None = None, image_size: int = 32, temperature: float = 1.0,
               device: str = "cpu") -> TrainedModel:
    """``network`` as a trained model of ``architecture``, normalised with ``mean``/``std`` on every channel."""
    if classes is None:
        classes = [f"class{i}" for i in range(int(getattr(network, "num_classes", 0) or 0))]
    return TrainedModel(network=network, name=architecture, architecture=architecture, classes=list(classes),
                        image_size=image_size, aspect="stretch", resample="bilinear", mean=[float(mean)] * 3,
                        std=[float(std)] * 3, device=torch.device(device), source="a test's network",
                        temperature=temperature)
