"""DVC stage `evaluate@<model>`: test/val metrics with confidence intervals, per-source breakdown, plots, speed."""

import json
import sys

from lungxray import schema
from lungxray.config import load_sections
from lungxray.errors import LungxrayError
from lungxray.evaluate import EvaluateParams, evaluate_model
from lungxray.stage import run_stage
from lungxray.train_settings import TrainParams


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
    split = "test" if out["test"] is not None else "val"
    t, cal = out[split], out["calibration"]

    def ci(k):
        lo, hi = t.get(f"{k}_ci_low"), t.get(f"{k}_ci_high")
        v = t.get(k)
        return "n/a" if v is None else f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")

    print(f"evaluate {name} on {t['n_samples']} {split} images: accuracy {ci('accuracy')}, macro recall "
          f"{ci('macro_recall')}, macro AUC {ci('macro_auc')}, ECE {t['ece']:.3f} (T {cal['temperature']:.2f}; "
          f"{cal[split]['ece_before']:.3f} uncalibrated); {out['throughput']['images_per_s']:.0f} images/s")
    for w in out["warnings"]:
        print(f"  warning: {w}")


if __name__ == "__main__":
    run_stage("evaluate", main)
