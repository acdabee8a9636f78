"""A tiny preprocessed data set (as the preprocess stage writes it) and small training settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lungxray.core.tracking import MlflowParams
from lungxray.train.settings import TrainParams

CLASSES = ["normal", "pneumonia", "covid19"]


def make_processed(root: Path, n_train=60, n_val=24, size=32, seed=0) -> Path:
    """A tiny preprocessed data set whose classes differ visibly (bright / dark / striped)."""
    rng = np.random.default_rng(seed)
    out = root / "processed"
    out.mkdir(parents=True)
    rows = []
    for split, n in (("train", n_train), ("val", n_val), ("test", 6)):
        labels = np.arange(n) % 3
        imgs = rng.integers(60, 100, (n, size, size)).astype(np.uint8)
        imgs[labels == 1] += 90
        imgs[labels == 2, :, ::4] = 250
        np.save(out / f"{split}.npy", imgs)
        rows += [{"split": split, "row": i, "id": f"{split}/{i}", "label": CLASSES[l], "label_idx": int(l),
                  "source": "synthetic"} for i, l in enumerate(labels)]
    pd.DataFrame(rows).to_csv(out / "index.csv", index=False)
    (out / "stats.json").write_text(json.dumps({"classes": CLASSES, "image_size": size, "mean": 0.4, "std": 0.2,
                                                "splits": {}}))
    return out


def train_params(tmp: Path, **kw) -> TrainParams:
    """Small, fast training settings tracked in an MLflow store under ``tmp``; ``kw`` overrides."""
    base = dict(models=["cnn5"], epochs=3, batch_size=16, lr=3e-3, pretrained=False,
                early_stopping_patience=5, mlflow=MlflowParams(tracking_uri=f"sqlite:///{tmp}/mlruns/mlflow.db",
                                                               artifact_dir=str(tmp / "mlruns" / "artifacts")))
    base.update(kw)
    return TrainParams(**base)


def make_sourced_processed(root: Path, border: bool, n_train=96, n_val=32, size=32, seed=0) -> Path:
    """A tiny preprocessed set of two sources, ``a`` (all normal) and ``b`` (all pneumonia), whose pixels are drawn
    alike; with ``border`` source ``a`` comes inside a white frame and black padding, so the source shows."""
    rng = np.random.default_rng(seed)
    out = root / "processed"
    out.mkdir(parents=True)
    rows = []
    for split, n in (("train", n_train), ("val", n_val), ("test", 8)):
        source = np.where(np.arange(n) % 2 == 0, "a", "b")
        imgs = rng.integers(60, 200, (n, size, size)).astype(np.uint8)
        if border:
            imgs[source == "a", :4] = 0
            imgs[source == "a", -4:] = 0
            imgs[source == "a", :, :2] = 255
        np.save(out / f"{split}.npy", imgs)
        rows += [{"split": split, "row": i, "id": f"{split}/{i}", "label": "normal" if s == "a" else "pneumonia",
                  "label_idx": 0 if s == "a" else 1, "source": s, "unit": f"{split}/{i}"}
                 for i, s in enumerate(source)]
    pd.DataFrame(rows).to_csv(out / "index.csv", index=False)
    (out / "stats.json").write_text(json.dumps({"classes": CLASSES, "image_size": size, "mean": 0.5, "std": 0.2,
                                                "splits": {}}))
    return out
