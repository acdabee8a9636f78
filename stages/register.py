"""DVC stage `register`: register every evaluated model in the MLflow registry; move `champion` by the rule."""

from lungxray.compare.leaderboard import leaderboard_rows
from lungxray.compare.promote import PromotionParams, selection_split
from lungxray.core import schema
from lungxray.core.config import load_sections
from lungxray.core.io import write_json
from lungxray.core.stage import run_stage
from lungxray.ensemble.members import EnsembleParams, evaluated_models
from lungxray.registry.register import load_predictions, register_and_promote, runs_page_url
from lungxray.train.settings import TrainParams


def main() -> None:
    params = load_sections({"train": TrainParams, "promote": PromotionParams, "ensemble": EnsembleParams})
    models = evaluated_models(params.ensemble, params.train.models)
    rows = leaderboard_rows(models, schema.METRICS)
    predictions = load_predictions(models, schema.METRICS, selection_split(params.promote))
    decision = register_and_promote(rows, params.promote, params.train.mlflow, predictions, schema.MODELS)
    write_json(schema.PROMOTION, decision)
    versions = ", ".join(f"{v['model']} v{v['version']}" for v in decision["registered_versions"])
    print(f"register: {params.promote.registered_model}: registered {versions}")
    print(f"  {decision['reason']}")
    print(f"  load the champion with {decision['load_with']}")
    print(f"  the training runs in the MLflow UI: {runs_page_url(params.train.mlflow)}")


if __name__ == "__main__":
    run_stage("register", main)
