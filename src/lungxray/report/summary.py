"""Section 1 of the report (the summary) and the run's warnings and limitations, each derived by a named rule from the
run's own outputs, never written by hand.

The rules (:data:`RULES`; each limitation in the report names the rule that produced it):

* ``shortcut``: the shortcut check's warning fired (``reports/shortcut.json`` ``warning.fires``).
* ``few_test_images``: a class has fewer than :data:`MIN_CLASS_TEST_IMAGES` images in the champion's test split
  (``per_class.<class>.support`` of its eval.json): its figures rest on too few images to be read alone.
* ``external_gap``: a fold model's macro recall on a held-out source is more than :data:`EXTERNAL_GAP` below the
  same architecture's in-source macro recall on that source's test images (``reports/external.json`` ``gap``).
* ``no_external``: no source was held out (one source, too few images, or the stage did not run): nothing says how
  the model does on data from elsewhere.
* ``test_selection``: the selection metric is a test metric (the test figures are then optimistic).
* ``single_source``: the run has one source.
* ``eval_warnings``: every warning the evaluate stage recorded (eval.json ``warnings``).
"""

from __future__ import annotations

from lungxray.core import schema
from lungxray.core.numbers import fmt
from lungxray.report.page import absent, esc, evidence, table, traced, traced_interval
from lungxray.report.run import Run

__all__ = ["summary_section", "warnings_and_limitations", "MIN_CLASS_TEST_IMAGES", "EXTERNAL_GAP", "RULES"]

MIN_CLASS_TEST_IMAGES = 30  # below this, a class's test figures get a warning (rule few_test_images)
EXTERNAL_GAP = 0.10  # an external macro recall this far below the in-source one gets a warning (rule external_gap)
RULES = ("shortcut", "few_test_images", "external_gap", "no_external", "test_selection", "single_source",
         "eval_warnings")


def warnings_and_limitations(run: Run) -> list[tuple[str, str, bool]]:
    """``(rule, text, is_warning)`` for every rule of the module docstring that fires on this run."""
    out: list[tuple[str, str, bool]] = []
    shortcut = run.json(schema.SHORTCUT_JSON, "shortcut", "the shortcut check") if (
        run.path(schema.SHORTCUT_JSON).is_file()) else None
    if shortcut and (shortcut.get("warning") or {}).get("fires"):
        message = (shortcut["warning"].get("message") or "the shortcut check's warning fired").replace("**", "")
        out.append(("shortcut", message, True))  # the message is Markdown (reports/shortcut.md): no bold marks here
    test = run.eval.get("test") or {}
    for c, d in (test.get("per_class") or {}).items():
        if d.get("support", 0) < MIN_CLASS_TEST_IMAGES:
            out.append(("few_test_images", f"class {c} has {d.get('support', 0)} test image(s) (< "
                                           f"{MIN_CLASS_TEST_IMAGES}): its sensitivity, PPV and AUC are too uncertain "
                                           f"to be read alone", True))
    external = _external(run)
    for source, fold in ((external or {}).get("folds") or {}).items():
        for model, r in (fold.get("models") or {}).items():
            g = r.get("gap")
            if g is not None and g < -EXTERNAL_GAP:
                out.append(("external_gap", f"{model} trained without {source} reaches macro recall "
                                            f"{fmt(r.get('macro_recall'))} on it, {fmt(-g)} below its in-source figure "
                                            f"on {source}'s test images: it may not carry to data from elsewhere",
                            True))
    if not (external or {}).get("folds"):
        why = "; ".join(f"{s}: {w}" for s, w in ((external or {}).get("skipped") or {}).items()) or (
            "reports/external.json is missing" if external is None else "no source was held out")
        out.append(("no_external", f"no leave-one-source-out figure ({why}): nothing here shows how the model does "
                                   f"on data from another source", False))
    metric = (run.params.get("promote") or {}).get("metric", "val_macro_recall")
    if metric.startswith("test_"):
        out.append(("test_selection", f"the champion was chosen on {metric}, a test metric: its test figures are "
                                      f"optimistic", True))
    sources = sorted(((run.eval.get("test") or {}).get("by_source") or {}))
    if len(sources) == 1:
        out.append(("single_source", f"every test image comes from one source ({sources[0]}): no figure here "
                                     f"speaks for other hospitals or scanners", False))
    out += [("eval_warnings", w, True) for w in run.eval.get("warnings") or []]
    return out


def _external(run: Run) -> dict | None:
    f = run.path(schema.EXTERNAL_JSON)
    return run.json(schema.EXTERNAL_JSON, "external") if f.is_file() else None


def summary_section(run: Run, findings: list[tuple[str, str, bool]]) -> str:
    """The champion, the rule that chose it, its test figures with intervals, its external figure, the warnings."""
    lb, name = str(schema.LEADERBOARD_JSON), run.champion
    row = run.leaderboard[name]
    after = run.promotion.get("champion_after") or {}
    metric = (run.params.get("promote") or {}).get("metric") or (run.promotion.get("compared") or {}).get("metric")
    metric = metric or "val_macro_recall"
    kind = "ensemble of " + esc(row.get("ensemble_of")) if row.get("ensemble_of") else "single model"
    head = evidence("ev-selection", f"<p>Champion: <strong>{esc(name)}</strong> ({kind}), registered as <code>"
            f"{esc(run.promotion.get('registered_model'))}</code> version {esc(after.get('version', '-'))}.</p>"
            f"<p>Chosen on <strong>val</strong> by <code>{esc(metric)}</code>: "
            f"{traced_interval(row, metric, lb, [name])}. Rule applied: "
            f"{esc((run.promotion.get('compared') or {}).get('method') or '-')}; {esc(run.promotion.get('reason'))}"
            f" <span class=src>({esc(str(schema.PROMOTION))})</span></p>")
    figures = [[esc(label), traced_interval(row, key, lb, [name])] for label, key in (
        ("test macro recall (sensitivity averaged over classes)", "test_macro_recall"),
        ("test accuracy", "test_accuracy"), ("test macro AUC (one-vs-rest)", "test_macro_auc"))]
    ext = row.get("external_macro_recall")
    figures.append(["external macro recall (leave-one-source-out, mean over held-out sources)",
                    traced(ext, lb, [name, "external_macro_recall"]) if ext is not None else
                    "- <span class=src>(not measured for this model: see section 5)</span>"])
    n = (run.eval.get("test") or {}).get("n_samples")
    body = head + table(["figure", "value [interval]"], figures, caption=(
        f"Test split: {traced(n, run.eval_file, ['test', 'n_samples'])} images; intervals: percentile bootstrap over "
        f"split units. Test figures are reported, not used for selection. Source: {esc(lb)}"))
    warnings = [f'<p class="warn"><strong>{esc(rule)}</strong>: {esc(text)}</p>' for rule, text, w in findings if w]
    body += "<h3>Warnings of this run</h3>" + ("".join(warnings) or "<p>No warning rule fired.</p>")
    if run.absent:
        body += "<h3>Absent from this report</h3>" + "".join(absent(what, why) for what, why in run.absent)
    return body
