"""A tiny preprocessed data set from three sources, one patient of which appears in all three (leave-one-source-out)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

CLASSES = ["normal", "pneumonia", "covid19"]
SOURCES = ("alpha", "beta", "gamma")
SHARED_UNIT = "kermany:person1"  # alpha's test image 0, beta's train image 0, gamma's val image 0


def make_multisource_processed(root: Path, per_split: dict | None = None, size: int = 32, seed: int = 0) -> Path:
    """``root/processed`` as the preprocess stage writes it: each source has ``per_split[split]`` images per split
    (classes visibly different: bright / dark / striped), each image its own unit except :data:`SHARED_UNIT`."""
    per_split = per_split or {"train": 12, "val": 6, "test": 3}
    rng = np.random.default_rng(seed)
    out = Path(root) / "processed"
    out.mkdir(parents=True)
    rows = []
    for split, n in per_split.items():
        labels = np.tile(np.arange(n) % 3, len(SOURCES))
        imgs = rng.integers(60, 100, (len(labels), size, size)).astype(np.uint8)
        imgs[labels == 1] += 90
        imgs[labels == 2, :, ::4] = 250
        np.save(out / f"{split}.npy", imgs)
        for r, label in enumerate(labels):
            source, i = SOURCES[r // n], r % n
            shared = i == 0 and (source, split) in {("alpha", "test"), ("beta", "train"), ("gamma", "val")}
            rows.append({"split": split, "row": r, "id": f"{source}/{split}/{i}", "label": CLASSES[label],
                         "label_idx": int(label), "source": source,
                         "unit": SHARED_UNIT if shared else f"{source}/{split}/{i}"})
    np.save(out / "test_official.npy", np.zeros((0, size, size), dtype=np.uint8))
    pd.DataFrame(rows).to_csv(out / "index.csv", index=False)
    (out / "stats.json").write_text(json.dumps({"classes": CLASSES, "image_size": size, "mean": 0.4, "std": 0.2,
                                                "aspect": "pad", "resample": "area", "splits": {}}))
    return out


def write_in_source_metrics(metrics_root: Path, name: str, val_macro_recall: float, total_parameters: int,
                            by_source: dict | None = None) -> None:
    """Stand-ins for what train@<name> and evaluate@<name> write (only the keys the leaderboard and external read)."""
    d = Path(metrics_root) / name
    d.mkdir(parents=True, exist_ok=True)
    test = {"macro_recall": 0.9, "macro_recall_ci_low": 0.8, "macro_recall_ci_high": 0.95, "accuracy": 0.9,
            "by_source": by_source or {}}
    (d / "eval.json").write_text(json.dumps({"test": test, "val": {"macro_recall": val_macro_recall},
                                             "throughput": {"images_per_s": 100.0}, "test_set": "t", "val_set": "v"}))
    (d / "train.json").write_text(json.dumps({"trainable_parameters": total_parameters,
                                              "total_parameters": total_parameters, "seconds_per_epoch": 1.0,
                                              "epochs_to_converge": 1}))
