"""DVC stage `compare`: one leaderboard of every trained architecture (Markdown, JSON, PNG), in the selection order."""

from lungxray.compare.leaderboard import (
    external_figures,
    leaderboard,
    leaderboard_rows,
    plot_leaderboard,
    shortcut_block,
)
from lungxray.compare.promote import PromotionParams
from lungxray.core import schema
from lungxray.core.config import load_sections
from lungxray.core.io import atomic_path, read_json, write_json
from lungxray.core.stage import run_stage
from lungxray.ensemble.members import EnsembleParams, evaluated_models
from lungxray.train.settings import TrainParams


def main() -> None:
    params = load_sections({"train": TrainParams, "promote": PromotionParams, "ensemble": EnsembleParams})
    rows = leaderboard_rows(evaluated_models(params.ensemble, params.train.models), schema.METRICS,
                            external_figures(schema.EXTERNAL_JSON))
    df, md = leaderboard(rows, params.promote)
    md = shortcut_block(read_json(schema.SHORTCUT_JSON) if schema.SHORTCUT_JSON.exists() else None) + md
    plot_leaderboard(df, schema.LEADERBOARD_PNG, promotion=params.promote)
    with atomic_path(schema.LEADERBOARD_MD) as tmp:
        tmp.write_text("# Leaderboard\n\n" + md + "\n")
    internal = {"model", "test_set", "val_set", "mlflow_run_id"}
    write_json(schema.LEADERBOARD_JSON,
               {r["model"]: {k: v for k, v in r.items() if k not in internal} for r in df.to_dict("records")})
    print(md)


if __name__ == "__main__":
    run_stage("compare", main)
