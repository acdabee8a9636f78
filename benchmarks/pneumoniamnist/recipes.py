"""PneumoniaMNIST: the issue-14 recipes on val, 3 seeds each, from the models ``smooth.py`` trained (val only).

For each training configuration (``smooth.py``'s, e.g. ``base`` ... ``noweight``) and each seed, the saved
``model.pt`` is scored on the 524 val images with the project's own code, one recipe per row:

* ``plain``: softmax of the logits (T = 1), arg-max.
* ``temperature``: the project's temperature scaling (:func:`lungxray.models.calibration.fit_temperature`). T fitted on
  the same val images it is scored on would flatter it, so it is **cross-fitted**: val is cut in two stratified halves
  (fixed seed), T is fitted on one half and applied to the other, and the scores are those of the pooled held-out
  predictions. (Arg-max accuracy and a binary AUC cannot change; NLL and ECE can.)
* ``tta``: the project's test-time augmentation (:func:`lungxray.evaluate.tta.tta_proba`, ``shifts`` = 7 views and
  ``flips_shifts`` = those + the horizontal mirror), T = 1.
* ``pneumonia@sens95`` / ``pneumonia@youden``: the project's operating points
  (:func:`lungxray.models.calibration.choose_operating_points`), also cross-fitted: chosen on one half, counted on the
  other. ``acc_t`` is the accuracy the rule would have at the official *test* split's class balance (37.5 % normal,
  against 26 % in val): the prevalence-shift check of issue 14.
* ``ensemble``: the mean probability of the configuration's seeds (the pipeline's ``ensemble`` stage), one row.

    PM_ROOT=/tmp/pm python benchmarks/pneumoniamnist/recipes.py --configs base noweight lr1e-3 [--out table.md]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]
import explore  # noqa: E402  (the processed folder and the val labels)
from seed_stats import mean_sd  # noqa: E402

from lungxray.evaluate.metrics.calibration import expected_calibration_error  # noqa: E402
from lungxray.evaluate.tta import tta_proba  # noqa: E402
from lungxray.models.calibration import choose_operating_points, fit_temperature, nll  # noqa: E402
from lungxray.models.inference import softmax_t  # noqa: E402
from lungxray.models.trained import load_trained_model  # noqa: E402

ROOT = Path(os.environ.get("PM_ROOT", "/tmp/pm"))


def halves(y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two stratified halves of the val indices (boolean masks)."""
    rng = np.random.default_rng(seed)
    a = np.zeros(len(y), bool)
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        a[idx[: len(idx) // 2]] = True
    return a, ~a


def scores(y: np.ndarray, probs: np.ndarray) -> dict:
    """:func:`explore.scores` (AUC, ACC, specificity, sensitivity, acc_t) of (N, 2) probabilities, with NLL and ECE."""
    p = np.clip(probs[np.arange(len(y)), y], 1e-12, 1)
    return {**explore.scores(probs[:, 1], y), "nll": float(-np.log(p).mean()),
            "ece": expected_calibration_error(y, probs)}


def cross_fitted_temperature(y: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Held-out calibrated probabilities: each half scaled by the T fitted on the other half."""
    out, ts = np.zeros_like(logits), []
    a, b = halves(y)
    for fit, apply in ((a, b), (b, a)):
        t = fit_temperature(logits[fit], y[fit])
        out[apply] = softmax_t(logits[apply], t)
        ts.append(t)
    return out, ts


def cross_fitted_rules(y: np.ndarray, probs: np.ndarray) -> dict[str, dict]:
    """Sensitivity / specificity on held-out halves of the pneumonia operating points chosen on the other half."""
    flags: dict[str, np.ndarray] = {}
    a, b = halves(y)
    for fit, apply in ((a, b), (b, a)):
        ops = choose_operating_points(y[fit], probs[fit], explore.CLASSES, 0.95)
        for name, op in ops.items():
            if op.get("class") == "pneumonia":
                flags.setdefault(name, np.zeros(len(y), bool))[apply] = probs[apply, 1] >= op["threshold"]
    out = {}
    for name, flag in flags.items():
        sens, spec = float(flag[y == 1].mean()), float((~flag[y == 0]).mean())
        out[name] = {"sens": sens, "spec": spec, "acc": float((flag == (y == 1)).mean()),
                     "acc_t": explore.TEST_NORMAL_SHARE * spec + (1 - explore.TEST_NORMAL_SHARE) * sens}
    return out


def score_run(model_pt: Path, processed: Path, y: np.ndarray) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """{recipe: scores} of one trained model, and its plain and TTA val probabilities (for the ensembles)."""
    model = load_trained_model(model_pt)
    x = np.load(processed / "val.npy")
    logits = model.logits(x, batch_size=256)
    plain = softmax_t(logits)
    calibrated, ts = cross_fitted_temperature(y, logits)
    rows = {"plain": scores(y, plain),
            "temperature (cross-fitted on val halves)": {**scores(y, calibrated), "T": float(np.mean(ts))}}
    probs = {"plain": plain}
    for mode in ("shifts", "flips_shifts"):
        probs[mode] = tta_proba(model, x, mode, batch_size=256, temperature=1.0)
        rows[f"tta {mode}"] = scores(y, probs[mode])
    rows.update(cross_fitted_rules(y, calibrated))
    rows["in-sample T (fitted and scored on all of val: optimistic)"] = {"nll": nll(logits, y, fit_temperature(logits, y))}
    return rows, probs


COLS = ["auc", "acc", "spec", "sens", "acc_t", "nll", "ece"]


def config_table(name: str, y: np.ndarray, processed: Path) -> list[str]:
    runs = sorted((ROOT / "smooth").glob(f"{name}_s[0-9]*/model/model.pt"))
    if not runs:
        return [f"| {name} | (no run under {ROOT / 'smooth'}) |" + " |" * len(COLS)]
    per_seed, probs = [], []
    for pt in runs:
        rows, p = score_run(pt, processed, y)
        per_seed.append(rows)
        probs.append(p)
    seeds = ",".join(p.parents[1].name.rsplit("_s", 1)[1] for p in runs)
    lines = []
    for recipe in per_seed[0]:
        cells = [mean_sd([r[recipe].get(c) for r in per_seed]) for c in COLS]
        lines.append(f"| {name} | {seeds} | {recipe} | " + " | ".join(cells) + " |")
    for kind, label in (("plain", ""), ("flips_shifts", " + tta flips_shifts")):
        ens = scores(y, np.mean([p[kind] for p in probs], axis=0))
        lines.append(f"| {name} | {seeds} | **ensemble** (mean probability of the {len(runs)} seeds){label} | "
                     + " | ".join(f"{ens[c]:.4f}" for c in COLS) + " |")
    return lines


def main(configs: list[str]) -> str:
    explore.ROOT = ROOT
    processed = explore.build_processed(28, "bilinear")
    y = explore.val_labels()
    head = ["| training | seeds | recipe | val AUC | val ACC | spec | sens | acc_t | NLL | ECE |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    return "\n".join(head + [line for name in configs for line in config_table(name, y, processed)])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", required=True)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    text = main(a.configs)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
