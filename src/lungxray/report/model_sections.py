"""Sections 3 to 6 of the report: the models (leaderboard, training curves, cost), the champion (per-class figures
with intervals, confusion matrix, ROC, reliability before and after temperature scaling, operating points and the
prevalence table, per-source breakdown), external validity with the shortcut check, and the Grad-CAM grid."""

from __future__ import annotations

import pandas as pd

from lungxray.core import schema
from lungxray.core.numbers import fmt
from lungxray.evaluate.metrics.tables import predictions_arrays
from lungxray.report.figures import per_class_intervals, prediction_units, reliability_svg
from lungxray.report.page import absent, esc, evidence, table, traced, traced_interval
from lungxray.report.run import Run

__all__ = ["models_section", "champion_section", "external_section", "gradcam_section"]

# --- section 3: the models


def models_section(run: Run) -> str:
    lb, metric = str(schema.LEADERBOARD_JSON), (run.params.get("promote") or {}).get("metric", "val_macro_recall")
    rows = []
    for name, r in run.leaderboard.items():
        star = " ★" if name == run.champion else ""
        rows.append([esc(r.get("rank", "")), esc(name) + star, traced_interval(r, metric, lb, [name]),
                     traced_interval(r, "test_macro_recall", lb, [name]), traced_interval(r, "test_accuracy", lb, [name]),
                     traced_interval(r, "test_macro_auc", lb, [name]),
                     traced(r.get("external_macro_recall"), lb, [name, "external_macro_recall"]),
                     traced(r.get("trainable_parameters"), lb, [name, "trainable_parameters"]),
                     traced(r.get("seconds_per_epoch"), lb, [name, "seconds_per_epoch"], 1),
                     traced(r.get("images_per_s"), lb, [name, "images_per_s"], 1)])
    out = evidence("ev-leaderboard", table(["rank", "model", f"{metric} (selection)", "test macro recall", "test accuracy", "test macro AUC",
                 "external macro recall", "trainable parameters", "s / epoch", "images / s (inference)"], rows,
                caption=f"Leaderboard in the selection order ({esc(lb)}): ranked by {esc(metric)} on val; the test "
                        f"figures are reported, not used. ★ champion."))
    out += run.figure(schema.LEADERBOARD_PNG, "leaderboard", "Leaderboard", "80%")
    out += "<h3>Training curves</h3>"
    for name in run.leaderboard:
        if run.leaderboard[name].get("ensemble_of"):
            out += f"<p>{esc(name)}: no training curve (the mean of its members' probabilities).</p>"
            continue
        out += run.figure(schema.model_metrics_dir(name) / "training_curve.png", f"training curve of {name}",
                              f"{name}: loss and val figures per epoch", "85%")
    return out


# --- section 4: the champion


def per_class_table(run: Run, split: str = "test") -> str:
    block = run.eval.get(split) or {}
    per_class = block.get("per_class") or {}
    intervals: dict = {}
    pred = run.path(schema.model_metrics_dir(run.champion) / f"predictions_{split}.csv")
    ev = run.params.get("evaluate") or {}
    if pred.is_file() and per_class:
        df = pd.read_csv(pred, keep_default_na=False, dtype={"id": str, "unit": str, "label": str})
        (y, p), units = predictions_arrays(df, run.classes), prediction_units(df)
        intervals = per_class_intervals(y, p, run.classes, units, int(ev.get("bootstrap", 1000)),
                                        float(ev.get("ci", 0.95)), int(ev.get("seed", 0)))
    else:
        run.absent.append(("per-class intervals", f"{pred.relative_to(run.root)} is missing: "
                                                  f"`dvc repro {run.producer(run.champion)}` writes it"))
    rows = []
    for c, d in per_class.items():
        cells = [esc(c), traced(d.get("support"), run.eval_file, [split, "per_class", c, "support"])]
        for s in ("sensitivity", "specificity", "ppv", "npv", "auc"):
            iv = (intervals.get(c) or {}).get(s) or {}
            ci = f" <span class=ci>[{fmt(iv.get('low'))}, {fmt(iv.get('high'))}]</span>" if iv.get("low") is not None \
                else ""
            cells.append(traced(d.get(s), run.eval_file, [split, "per_class", c, s]) + ci)
        rows.append(cells)
    if not rows:
        return absent("the per-class figures", f"{run.eval_file} has no {split} per_class block")
    return evidence("ev-per-class", table(["class", "images", "sensitivity", "specificity", "PPV", "NPV",
                                           "AUC (one-vs-rest)"], rows,
                 caption=f"{esc(split)} split, argmax decision. Values: {esc(run.eval_file)}; intervals: percentile "
                         f"bootstrap over split units computed here from predictions_{esc(split)}.csv (evaluate.bootstrap"
                         f" resamples, evaluate.seed)"))


def calibration_part(run: Run) -> str:
    cal = run.eval.get("calibration") or {}
    rows = [[esc(s), traced((cal.get(s) or {}).get("ece_before"), run.eval_file, ["calibration", s, "ece_before"]),
             traced((cal.get(s) or {}).get("ece_after"), run.eval_file, ["calibration", s, "ece_after"]),
             traced((cal.get(s) or {}).get("nll_before"), run.eval_file, ["calibration", s, "nll_before"]),
             traced((cal.get(s) or {}).get("nll_after"), run.eval_file, ["calibration", s, "nll_after"])]
            for s in schema.EVAL_SPLITS if s in cal]
    t = cal.get("temperature", 1.0)
    out = (f"<p>Calibration: <code>{esc(cal.get('method', 'none'))}</code>, temperature "
           f"{traced(t, run.eval_file, ['calibration', 'temperature'])} fitted on {esc(cal.get('fitted_on', 'val'))}."
           f"</p>")
    if rows:
        out += evidence("ev-calibration", table(["split", "ECE before", "ECE after", "NLL before", "NLL after"], rows,
                                                caption=esc(run.eval_file)))
    split = run.eval.get("plots_split", "test")
    pred = run.path(schema.model_metrics_dir(run.champion) / f"predictions_{split}.csv")
    if pred.is_file():
        df = pd.read_csv(pred, keep_default_na=False, dtype={"id": str, "unit": str, "label": str})
        y, p = predictions_arrays(df, run.classes)
        bins = int((run.params.get("evaluate") or {}).get("ece_bins", 15))
        out += (f"<figure>{reliability_svg(y, p, float(t), bins)}<figcaption>Reliability diagram of the {esc(split)} "
                f"split before and after temperature scaling (bars: accuracy per confidence bin; dashed: perfect "
                f"calibration) <span class=src>({esc(str(pred.relative_to(run.root)))}, temperature from "
                f"{esc(run.eval_file)})</span></figcaption></figure>")
    return out


def operating_points_part(run: Run) -> str:
    ops = run.eval.get("operating_points") or {}
    if not ops:
        return absent("the operating points", f"{run.eval_file} has none (an older evaluate, or the ensemble)")
    rows = []
    for split in schema.EVAL_SPLITS:
        for name, per_class in (ops.get(split) or {}).items():
            if name == "argmax":
                continue
            for c, m in per_class.items():
                base = [split, name, c]
                rows.append([esc(split), esc(name), esc(c),
                             esc(fmt((ops.get("stored") or {}).get(name, {}).get("threshold"))),
                             traced_interval(m, "sensitivity", run.eval_file, ["operating_points"] + base),
                             traced_interval(m, "specificity", run.eval_file, ["operating_points"] + base),
                             traced(m.get("ppv"), run.eval_file, ["operating_points"] + base + ["ppv"]),
                             traced(m.get("npv"), run.eval_file, ["operating_points"] + base + ["npv"])])
    out = table(["split", "operating point", "class", "threshold", "sensitivity", "specificity", "PPV", "NPV"], rows,
                caption=f"Operating points chosen on val (stored with the model), measured on each split "
                        f"({esc(run.eval_file)})") if rows else "<p>Only the argmax decision is stored.</p>"
    prev = ops.get("prevalence_table") or []
    if prev:
        out += table(["operating point", "class", "at", "prevalence", "PPV", "NPV", "accuracy"],
                     [[esc(r["operating_point"]), esc(r["class"]), esc(r["at"]), fmt(r["prevalence"]), fmt(r["ppv"]),
                       fmt(r["npv"]), fmt(r["accuracy"])] for r in prev],
                     caption=f"Prevalence table: PPV / NPV expected from the val sensitivity and specificity at other "
                             f"prevalences ({esc(run.eval_file)} operating_points.prevalence_table)")
    return evidence("ev-operating", out) if rows or prev else out


def by_source_part(run: Run) -> str:
    by = (run.eval.get("test") or {}).get("by_source") or {}
    rows = [[esc(s), traced(m.get("n_samples"), run.eval_file, ["test", "by_source", s, "n_samples"]),
             traced(m.get("accuracy"), run.eval_file, ["test", "by_source", s, "accuracy"]),
             traced(m.get("macro_recall"), run.eval_file, ["test", "by_source", s, "macro_recall"]),
             traced(m.get("macro_auc"), run.eval_file, ["test", "by_source", s, "macro_auc"])] for s, m in by.items()]
    if not rows:
        return absent("the per-source breakdown", f"{run.eval_file} has no test by_source block")
    return evidence("ev-by-source", table(["source", "test images", "accuracy", "macro recall", "macro AUC"], rows,
                                          caption=f"Per-source breakdown of the test split ({esc(run.eval_file)})"))


def champion_section(run: Run) -> str:
    d = schema.model_reports_dir(run.champion)
    confusion = run.figure(d / "confusion_matrix.png", "confusion matrix", "Confusion matrix", "60%")
    if run.path(d / "confusion_matrix.png").is_file():
        confusion = evidence("ev-confusion", confusion)
    return ("<h3>Per-class figures</h3>" + per_class_table(run) + confusion
            + run.figure(d / "roc.png", "ROC", "ROC curves (one-vs-rest)", "70%")
            + "<h3>Calibration</h3>" + calibration_part(run)
            + "<h3>Operating points</h3>" + operating_points_part(run)
            + "<h3>Per source</h3>" + by_source_part(run))


# --- section 5: external validity and the shortcut check

HOW_TO_READ_EXTERNAL = (
    "Leave-one-source-out: each architecture is trained on every source but one (no image sharing a patient or an "
    "X-ray with it) and tested on all of the held-out source. A figure well below the in-source one on that source's "
    "test images (the gap) means the model learnt something specific to its sources: expect a drop on data from "
    "another hospital or scanner.")
HOW_TO_READ_SHORTCUT = (
    "The shortcut check trains a small probe to tell an image's source from its pixels, and measures how much the "
    "labels depend on the source (Cramer's V). When both are high, a classifier can score by recognising the source "
    "instead of the disease, and the in-source test figures may be optimistic.")


def external_section(run: Run) -> str:
    out = f"<p>{esc(HOW_TO_READ_EXTERNAL)}</p>"
    ext = run.json(schema.EXTERNAL_JSON, "external", "the external (leave-one-source-out) figures")
    src = str(schema.EXTERNAL_JSON)
    if ext is None:
        out += absent("the external figures", f"{src} is missing: `dvc repro external` writes it")
    elif not ext.get("folds"):
        why = "; ".join(f"{s}: {w}" for s, w in (ext.get("skipped") or {}).items()) or "no source was held out"
        out += absent("external folds", f"no source was held out ({why})")
    else:
        rows = []
        for source, fold in ext["folds"].items():
            for model, r in (fold.get("models") or {}).items():
                base = ["folds", source, "models", model]
                rows.append([esc(source), esc(model), traced(fold.get("images"), src, ["folds", source, "images"]),
                             traced_interval(r, "macro_recall", src, base),
                             traced((r.get("in_source") or {}).get("source_test_macro_recall"), src,
                                    base + ["in_source", "source_test_macro_recall"]),
                             traced(r.get("gap"), src, base + ["gap"])])
        out += evidence("ev-external", table(
            ["held-out source", "model", "images", "external macro recall", "in-source (its test images)", "gap"],
            rows, caption=f"Leave-one-source-out ({esc(src)})"))
        out += run.figure(schema.EXTERNAL_PNG, "external", "External against in-source macro recall", "80%")
    out += f"<h3>Shortcut check</h3><p>{esc(HOW_TO_READ_SHORTCUT)}</p>"
    sc = run.json(schema.SHORTCUT_JSON, "shortcut", "the shortcut check")
    if sc is None:
        return out + absent("the shortcut check", f"{schema.SHORTCUT_JSON} is missing: `dvc repro shortcut` writes it")
    s, w, p = str(schema.SHORTCUT_JSON), sc.get("warning") or {}, sc.get("probe") or {}
    verdict = '<span class="no">fires</span>' if w.get("fires") else '<span class="ok">does not fire</span>'
    out += evidence("ev-shortcut", f"<p>The warning {verdict}. {esc(w.get('message') or '')}</p>")
    if p:
        out += (f"<p>Source probe ({esc(p.get('model'))}): val accuracy {traced_interval(p, 'accuracy', s, ['probe'])}"
                f" against a majority-source rate of {traced(p.get('majority_rate'), s, ['probe', 'majority_rate'])};"
                f" Cramer's V of label and source "
                f"{traced((sc.get('labels') or {}).get('cramers_v'), s, ['labels', 'cramers_v'], 2)}.</p>")
    elif sc.get("skipped"):
        out += absent("the source probe", str(sc["skipped"]))
    return out + run.figure(schema.SHORTCUT_PNG, "shortcut", "Shortcut check", "80%")


# --- section 6: where it looks


def gradcam_section(run: Run) -> str:
    intro = ("<p>Grad-CAM heat maps of the predicted class: per true class, the most confident correct and wrong "
             "predictions of the plotted split. They show where the network's evidence lies, not that the evidence "
             "is clinical: a map on a marker, the border or text is a shortcut.</p>")
    grid = schema.model_reports_dir(run.champion) / "gradcam.png"
    if run.leaderboard[run.champion].get("ensemble_of") and not run.path(grid).is_file():
        members = run.leaderboard[run.champion]["ensemble_of"]
        out = absent("the champion's Grad-CAM grid", f"the champion is the ensemble of {members}: it has no single "
                                                     f"network to explain; its members' grids follow")
        for m in [x.strip() for x in members.split(",")]:
            f = schema.model_reports_dir(m) / "gradcam.png"
            shown = run.figure(f, f"Grad-CAM of {m}", f"{m}: Grad-CAM grid")
            out += evidence("ev-gradcam", shown) if run.path(f).is_file() and "ev-gradcam" not in out else shown
        return intro + out
    shown = run.figure(grid, "Grad-CAM grid", f"{run.champion}: Grad-CAM grid")
    return intro + (evidence("ev-gradcam", shown) if run.path(grid).is_file() else shown)
