"""DVC stage `shortcut`: can a small model tell an image's source, and do the sources give the labels away?"""

from lungxray.core import schema
from lungxray.core.config import load_sections
from lungxray.core.io import atomic_path, write_json
from lungxray.core.stage import run_stage
from lungxray.core.tracking import log_shortcut_check
from lungxray.external.shortcut import ShortcutParams, plot_shortcut, run_shortcut, shortcut_markdown, warning_text
from lungxray.train.fit import TrainParams


def main() -> None:
    params = load_sections({"shortcut": ShortcutParams, "train": TrainParams})
    report = run_shortcut(schema.PROCESSED, params.shortcut)
    plot_shortcut(report, schema.SHORTCUT_PNG)
    with atomic_path(schema.SHORTCUT_MD) as tmp:
        tmp.write_text(shortcut_markdown(report))
    report["mlflow_run_id"] = log_shortcut_check(report, [schema.SHORTCUT_MD, schema.SHORTCUT_PNG],
                                                 params.train.mlflow)
    write_json(schema.SHORTCUT_JSON, report)  # last: the compare stage reads it
    p, v = report["probe"], report["labels"]["cramers_v"]
    print(warning_text(report) or "shortcut: no warning" + (
        f" (probe val accuracy {p['accuracy']:.3f}, majority source {p['majority_rate']:.3f}, Cramer's V "
        f"{'-' if v is None else f'{v:.2f}'})" if p else f" ({report['skipped']})"))


if __name__ == "__main__":
    run_stage("shortcut", main)
