"""DVC stage `external_plan`: the architectures the external stage trains in each fold, their settings files and the
in-source test figures its report shows beside theirs, read from metrics/ and models/settings/ (the external stage
depends on this file, not on metrics/ nor on the whole train section)."""

from lungxray.compare.promote import PromotionParams
from lungxray.core import schema
from lungxray.core.config import load_sections
from lungxray.core.io import write_json
from lungxray.core.stage import run_stage
from lungxray.external.plan import ExternalParams, external_plan
from lungxray.train.settings import TrainParams


def main() -> None:
    p = load_sections({"external": ExternalParams, "train": TrainParams, "promote": PromotionParams})
    plan = external_plan(p.external, p.train, schema.METRICS, p.promote, schema.TRAIN_SETTINGS)
    write_json(schema.EXTERNAL_PLAN, plan)
    print(f"external stage plan: {', '.join(plan['models'])} ({plan['models_rule']})")


if __name__ == "__main__":
    run_stage("external_plan", main)
