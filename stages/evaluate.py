"""DVC stage `evaluate@<model>`: test/val metrics with confidence intervals, per-source breakdown, plots, speed."""

import json
import sys

from lungxray.core import schema
from lungxray.core.config import load_sections
from lungxray.core.errors import LungxrayError
from lungxray.core.stage import run_stage
from lungxray.evaluate.evaluation import EvaluateParams, evaluate_model
from lungxray.evaluate.extras import summary_line
from lungxray.train.settings import TrainParams


def main() -> None:
    if len(sys.argv) != 2:
        raise LungxrayError("usage: python stages/evaluate.py MODEL")
    name = sys.argv[1]
    params = load_sections({"evaluate": EvaluateParams, "train": TrainParams})
    train_json = schema.model_metrics_dir(name) / "train.json"
    if not train_json.exists():
        raise LungxrayError(f"{train_json} is missing: train {name} first (dvc repro train@{name})")
    out = evaluate_model(name, schema.PROCESSED, schema.model_dir(name) / "model.pt", schema.model_metrics_dir(name),
                         schema.model_reports_dir(name), params.evaluate, json.loads(train_json.read_text()),
                         params.train.mlflow)
    print(summary_line(f"evaluate {name}", out))
    for w in out["warnings"]:
        print(f"  warning: {w}")


if __name__ == "__main__":
    run_stage("evaluate", main)
