"""Section 8 of the report: the reporting checklists, CLAIM 2024 (Checklist for Artificial Intelligence in Medical
Imaging, Tejani et al., Radiology: Artificial Intelligence 2024) and TRIPOD+AI (Collins et al., BMJ 2024).

Each item is listed by its topic, in short words (check the wording and numbering against the published checklists).
An item the pipeline run can answer names the *evidence* that answers it: an element id that a section of the report
emits only when it holds that content (``ev-external`` exists only when a source was held out). The item is marked
answered only when its evidence is in the page; otherwise it says that this run does not answer it. Items only the
authors can answer (clinical context, intended use, ethics, funding, ...) are listed as such, never filled in.
"""

from __future__ import annotations

from lungxray.report.page import esc, table

__all__ = ["ITEMS", "checklist_section", "AUTHORS"]

AUTHORS = None  # the evidence of an item that only the authors can answer

# (checklist, topic, item in short words, evidence id or AUTHORS)
ITEMS: list[tuple[str, str, str, str | None]] = [
    ("CLAIM 2024", "Title / abstract", "identify the work as AI in medical imaging; structured abstract", AUTHORS),
    ("CLAIM 2024", "Introduction", "scientific and clinical background, intended use and clinical role of the AI",
     AUTHORS),
    ("CLAIM 2024", "Introduction", "study objectives and hypotheses", AUTHORS),
    ("CLAIM 2024", "Study design", "prospective or retrospective; study goal", AUTHORS),
    ("CLAIM 2024", "Data", "data sources", "ev-sources"),
    ("CLAIM 2024", "Data", "eligibility criteria (inclusion, exclusion) of the cases", AUTHORS),
    ("CLAIM 2024", "Data", "data pre-processing steps", "ev-preprocess"),
    ("CLAIM 2024", "Data", "selection of data subsets; duplicates and label conflicts", "ev-dedupe"),
    ("CLAIM 2024", "Data", "de-identification methods", AUTHORS),
    ("CLAIM 2024", "Data", "how missing or unusable data were handled (rejected files)", "ev-sources"),
    ("CLAIM 2024", "Data", "image acquisition protocol", AUTHORS),
    ("CLAIM 2024", "Ground truth", "definition and rationale of the reference standard; annotators and their "
                                   "qualifications; inter-rater variability", AUTHORS),
    ("CLAIM 2024", "Data partitions", "how data were assigned to partitions, with their proportions", "ev-split"),
    ("CLAIM 2024", "Data partitions", "level at which partitions are disjoint (patient, X-ray copy)", "ev-leakage"),
    ("CLAIM 2024", "Model", "model description, inputs and outputs; software libraries and versions", "ev-libraries"),
    ("CLAIM 2024", "Training", "training details (initialisation, hyperparameters); the params of the run",
     "ev-params"),
    ("CLAIM 2024", "Training", "method of selecting the final model", "ev-selection"),
    ("CLAIM 2024", "Training", "ensembling techniques", "ev-leaderboard"),
    ("CLAIM 2024", "Evaluation", "performance metrics, with their uncertainty (confidence intervals)", "ev-per-class"),
    ("CLAIM 2024", "Evaluation", "robustness or sensitivity analysis (per source, shortcut check)", "ev-by-source"),
    ("CLAIM 2024", "Evaluation", "methods for explainability (saliency maps)", "ev-gradcam"),
    ("CLAIM 2024", "Evaluation", "validation on external data", "ev-external"),
    ("CLAIM 2024", "Results", "flow of cases: counts through fetch, dedupe and the split", "ev-split"),
    ("CLAIM 2024", "Results", "demographic and clinical characteristics of cases in each partition", AUTHORS),
    ("CLAIM 2024", "Results", "performance on all partitions; calibration", "ev-calibration"),
    ("CLAIM 2024", "Results", "failure analysis of misclassified cases", "ev-confusion"),
    ("CLAIM 2024", "Discussion", "limitations: bias, statistical uncertainty, generalisability (derived from the "
                                 "run)", "ev-limitations"),
    ("CLAIM 2024", "Discussion", "implications for practice, intended use and clinical role", AUTHORS),
    ("CLAIM 2024", "Other", "registration, protocol, funding, conflicts of interest", AUTHORS),
    ("TRIPOD+AI", "Title / abstract / introduction", "title, abstract, healthcare context, rationale and objectives",
     AUTHORS),
    ("TRIPOD+AI", "Methods: data", "sources of data; dates and setting of collection", "ev-sources"),
    ("TRIPOD+AI", "Methods: participants", "eligibility criteria, setting, treatments received", AUTHORS),
    ("TRIPOD+AI", "Methods: data preparation", "pre-processing and quality checking", "ev-preprocess"),
    ("TRIPOD+AI", "Methods: outcome", "outcome (the classes), how and when assessed; blinding", AUTHORS),
    ("TRIPOD+AI", "Methods: sample size", "how the study size was arrived at", AUTHORS),
    ("TRIPOD+AI", "Methods: missing data", "how missing or unusable data were handled", "ev-sources"),
    ("TRIPOD+AI", "Methods: analysis", "how the data were used (development, evaluation); partitioning",
     "ev-split"),
    ("TRIPOD+AI", "Methods: analysis", "model type, building and internal validation; hyperparameters",
     "ev-leaderboard"),
    ("TRIPOD+AI", "Methods: analysis", "performance measures, with calibration and their uncertainty",
     "ev-calibration"),
    ("TRIPOD+AI", "Methods: class imbalance", "methods to handle class imbalance (params)", "ev-params"),
    ("TRIPOD+AI", "Methods: fairness", "approaches to address model fairness across groups", AUTHORS),
    ("TRIPOD+AI", "Methods: model output", "output of the model (probabilities, thresholds) and how chosen",
     "ev-operating"),
    ("TRIPOD+AI", "Methods: ethics and open science", "ethical approval, funding, conflicts of interest, protocol, "
                                                      "registration, data and code sharing", AUTHORS),
    ("TRIPOD+AI", "Methods: patient and public involvement", "details of involvement", AUTHORS),
    ("TRIPOD+AI", "Results", "flow of participants; characteristics of each data source", "ev-split"),
    ("TRIPOD+AI", "Results", "model performance with intervals; in key subgroups (per source)", "ev-by-source"),
    ("TRIPOD+AI", "Results", "performance on data from another source (external)", "ev-external"),
    ("TRIPOD+AI", "Results", "model specification sufficient to reproduce it", "ev-repro"),
    ("TRIPOD+AI", "Discussion", "interpretation, limitations (derived from the run)", "ev-limitations"),
    ("TRIPOD+AI", "Discussion", "usability in context, intended use, next steps", AUTHORS),
]


def checklist_section(html_so_far: str, findings: list[tuple[str, str, bool]]) -> str:
    """The derived limitations, then each item answered (a link to its evidence), not answered by this run, or left
    to the authors. ``html_so_far``: the sections 1 to 7 as rendered (where the evidence ids are looked up)."""
    lim = "".join(f"<li><code>{esc(rule)}</code>: {esc(text)}</li>" for rule, text, _ in findings)
    out = ('<h3>Limitations derived from this run</h3><div id="ev-limitations"><p>Each line names the rule that '
           'produced it (lungxray.report.summary); none is written by hand.</p>'
           + (f"<ul>{lim}</ul>" if lim else "<p>No limitation rule fired.</p>") + "</div>")
    rows = []
    for guideline, topic, item, evidence in ITEMS:
        if evidence is AUTHORS:
            status = '<span class="authors">to be answered by the authors</span>'
        elif f'id="{evidence}"' in html_so_far:
            status = f'<a class="answered" href="#{esc(evidence)}">answered: see here</a>'
        else:
            status = '<span class="no unanswered">not answered by this run (its output is absent)</span>'
        rows.append([esc(guideline), esc(topic), esc(item), status])
    out += "<h3>Reporting checklist</h3>" + table(
        ["checklist", "topic", "item (short)", "in this report"], rows,
        caption="CLAIM 2024 and TRIPOD+AI items, abbreviated. Items a pipeline run cannot answer (clinical context, "
                "intended use, ethics, annotators, ...) are left to the authors, never filled in here.")
    return out
