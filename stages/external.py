"""DVC stage `external`: leave-one-source-out; each chosen architecture trained without one source, tested on it."""

from lungxray.core import schema
from lungxray.core.config import load_sections
from lungxray.core.errors import LungxrayError
from lungxray.core.io import atomic_path, read_json, write_json
from lungxray.core.stage import run_stage
from lungxray.data.preprocess import PreprocessParams
from lungxray.data.split import SplitParams
from lungxray.evaluate.metrics import EvaluateParams
from lungxray.external.plan import ExternalParams
from lungxray.external.report import external_markdown, plot_external
from lungxray.external.run import run_external
from lungxray.train.settings import TrainParams


def main() -> None:
    if not schema.EXTERNAL_PLAN.exists():
        raise LungxrayError(f"{schema.EXTERNAL_PLAN} is missing: run `dvc repro external` (it runs the external_plan "
                            f"stage first), or `python stages/external_plan.py`")
    schema.EXTERNAL_JSON.unlink(missing_ok=True)  # never read an earlier run's figures as this one's
    p = load_sections({"external": ExternalParams, "train": TrainParams, "evaluate": EvaluateParams,
                       "preprocess": PreprocessParams, "split": SplitParams})
    report = run_external(p.external, p.train, p.evaluate, read_json(schema.EXTERNAL_PLAN), schema.PROCESSED,
                          schema.EXTERNAL_DIR, extra_params={"preprocess": p.preprocess.model_dump(mode="json"),
                                                             "split": p.split.model_dump(mode="json")})
    # the folds' work folder is the stage's output even when no source is held out (one source, too few images)
    write_json(schema.EXTERNAL_DIR / "folds.json", {"folds": sorted(report["folds"]), "skipped": report["skipped"]})
    md = external_markdown(report)
    plot_external(report, schema.EXTERNAL_PNG)
    with atomic_path(schema.EXTERNAL_MD) as tmp:
        tmp.write_text(md)
    write_json(schema.EXTERNAL_JSON, report)  # last: its presence means the stage finished
    print(md)


if __name__ == "__main__":
    run_stage("external", main)
