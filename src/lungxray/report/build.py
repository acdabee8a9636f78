"""The run report: one self-contained HTML page (``reports/report.html``) from the run's own outputs.

Self-contained: every figure is a data URI (PNG) or inline SVG, the one style sheet is inline, there is no script, and
a Content-Security-Policy forbids fetching anything, so the page opens offline in any browser and prints sensibly
(``@media print``). Sections, in order: :data:`SECTIONS`. The summary is rendered last (it lists what the other
sections found absent) but placed first.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from lungxray.report.checklist import checklist_section
from lungxray.report.data_section import data_section
from lungxray.report.model_sections import champion_section, external_section, gradcam_section, models_section
from lungxray.report.page import esc, page
from lungxray.report.repro_section import repro_section
from lungxray.report.run import Run, load_run
from lungxray.report.summary import summary_section, warnings_and_limitations

__all__ = ["SECTIONS", "build_report", "render"]

log = logging.getLogger(__name__)

SECTIONS = [  # (id, heading)
    ("summary", "Summary"),
    ("data", "Data"),
    ("models", "Models"),
    ("champion", "The champion"),
    ("external", "External validity and the shortcut check"),
    ("gradcam", "Where it looks"),
    ("reproducibility", "Reproducibility"),
    ("checklist", "Checklist"),
]


def render(run: Run) -> str:
    """The page of ``run``."""
    findings = warnings_and_limitations(run)
    bodies = {"data": data_section(run), "models": models_section(run), "champion": champion_section(run),
              "external": external_section(run), "gradcam": gradcam_section(run),
              "reproducibility": repro_section(run)}
    bodies["summary"] = summary_section(run, findings)
    bodies["checklist"] = checklist_section("".join(bodies.values()), findings)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (f"Champion {esc(run.champion)}; built {when} from the outputs of the pipeline run (each figure names "
                f"its file, each number carries its JSON source).")
    return page("lungxray run report", subtitle, [(sid, title, bodies[sid]) for sid, title in SECTIONS])


def build_report(root: str | Path = ".") -> tuple[str, Run]:
    """The HTML of the run under ``root`` and the run it describes (stops with the stage to run when a required
    output is missing: :mod:`lungxray.report.run`)."""
    run = load_run(root)
    html = render(run)
    for what, why in run.absent:
        log.info("report: absent: %s (%s)", what, why)
    return html, run
