"""DVC stage `report`: one self-contained HTML page of the run (reports/report.html), logged with the champion."""

from lungxray.compare.promote import PromotionParams
from lungxray.core import schema
from lungxray.core.config import load_sections
from lungxray.core.io import atomic_path
from lungxray.core.stage import run_stage
from lungxray.report.build import build_report
from lungxray.report.publish import publish_report
from lungxray.train.settings import TrainParams


def main() -> None:
    params = load_sections({"train": TrainParams, "promote": PromotionParams})
    html, run = build_report(".")
    with atomic_path(schema.REPORT_HTML) as tmp:
        tmp.write_text(html, encoding="utf-8")
    logged = publish_report(schema.REPORT_HTML, run.promotion, params.train.mlflow)
    print(f"report: {schema.REPORT_HTML} ({len(html.encode()) / 1e6:.1f} MB), champion {run.champion}; "
          f"{len(run.absent)} absent part(s)" + "".join(f"\n  absent: {w} ({y})" for w, y in run.absent))
    if logged:
        print(f"  logged to MLflow: {logged['uri']} ({logged['registered_model']} v{logged['version']})")


if __name__ == "__main__":
    run_stage("report", main)
