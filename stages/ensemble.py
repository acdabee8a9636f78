"""DVC stage `ensemble`: the mean probability of the chosen trained models, evaluated and tracked as one model."""

from lungxray.core import schema
from lungxray.core.config import load_sections
from lungxray.core.stage import run_stage
from lungxray.ensemble.evaluation import evaluate_ensemble, write_disabled
from lungxray.ensemble.members import ENSEMBLE, EnsembleParams
from lungxray.evaluate.evaluation import EvaluateParams
from lungxray.evaluate.extras import summary_line
from lungxray.train.settings import TrainParams


def main() -> None:
    params = load_sections({"ensemble": EnsembleParams, "train": TrainParams, "evaluate": EvaluateParams})
    metrics_dir, reports_dir = schema.model_metrics_dir(ENSEMBLE), schema.model_reports_dir(ENSEMBLE)
    if not params.ensemble.enabled:
        write_disabled(metrics_dir, reports_dir)
        print("ensemble: disabled (ensemble.enabled: false)")
        return
    out = evaluate_ensemble(params.ensemble, params.train.models, schema.PROCESSED, schema.METRICS, schema.MODELS,
                            reports_dir, params.evaluate, params.train.mlflow)
    print(summary_line(f"ensemble of {', '.join(out['members'])}", out))
    for w in out["warnings"]:
        print(f"  warning: {w}")


if __name__ == "__main__":
    run_stage("ensemble", main)
