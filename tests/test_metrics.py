from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from lungxray.evaluate.evaluation import plot_confusion_matrix, plot_reliability, plot_roc_curves
from lungxray.evaluate.metrics import (
    EvaluateParams,
    bootstrap_ci,
    compute_metrics,
    confusion_pairs,
    metrics_by_source,
    ovr_auc,
    reliability_data,
    roc_points,
    summary,
)

CLASSES = ["normal", "pneumonia", "covid19", "tuberculosis"]
FAST = EvaluateParams(bootstrap=200, seed=1)


def random_data(n=300, c=4, seed=0, skill=1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += skill
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_metrics_match_sklearn():
    y, p = random_data()
    m = compute_metrics(y, p, CLASSES, FAST)
    yp = p.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, yp))
    assert m["micro_f1"] == pytest.approx(f1_score(y, yp, average="micro"))
    assert m["macro_recall"] == pytest.approx(recall_score(y, yp, average="macro"))
    assert m["macro_precision"] == pytest.approx(precision_score(y, yp, average="macro"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, yp, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, yp, average="weighted"))
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    for k, name in enumerate(CLASSES):
        assert m["per_class"][name]["auc"] == pytest.approx(roc_auc_score(y == k, p[:, k]))
        assert m["per_class"][name]["sensitivity"] == pytest.approx(recall_score(y == k, yp == k))
        assert m["per_class"][name]["ppv"] == pytest.approx(precision_score(y == k, yp == k))
    assert m["confusion_matrix"]["matrix"] == pd.crosstab(y, yp).reindex(index=range(4), columns=range(4),
                                                                         fill_value=0).values.tolist()
    assert "pneumonia" in m["classification_report"] and "macro avg" in m["classification_report"]
    json.dumps(m, allow_nan=False)  # JSON-able, no NaN


def test_auc_ties_match_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 200)
    p = rng.integers(0, 4, size=(200, 3)).astype(float) + 1  # many ties
    p /= p.sum(1, keepdims=True)
    for k in range(3):
        assert ovr_auc(y, p, k)[0] == pytest.approx(roc_auc_score(y == k, p[:, k]))


def test_specificity_npv_by_hand():
    # confusion matrix (rows true): [[3,1,0],[1,2,1],[0,0,2]]
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    yp = np.array([0, 0, 0, 1, 0, 1, 1, 2, 2, 2])
    p = np.full((10, 3), 0.1)
    p[np.arange(10), yp] = 0.8
    m = compute_metrics(y, p, ["a", "b", "c"], FAST)
    assert m["confusion_matrix"]["matrix"] == [[3, 1, 0], [1, 2, 1], [0, 0, 2]]
    a, b, c = (m["per_class"][k] for k in "abc")
    # class a: tp 3, fn 1, fp 1, tn 5
    assert a["sensitivity"] == pytest.approx(3 / 4) and a["ppv"] == pytest.approx(3 / 4)
    assert a["specificity"] == pytest.approx(5 / 6) and a["npv"] == pytest.approx(5 / 6)
    # class b: tp 2, fn 2, fp 1, tn 5
    assert b["specificity"] == pytest.approx(5 / 6) and b["npv"] == pytest.approx(5 / 7)
    assert b["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    # class c: tp 2, fn 0, fp 1, tn 7
    assert c["specificity"] == pytest.approx(7 / 8) and c["npv"] == pytest.approx(1.0)
    assert c["support"] == 2 and c["predicted"] == 3
    assert m["macro_specificity"] == pytest.approx(np.mean([5 / 6, 5 / 6, 7 / 8]))
    assert m["accuracy"] == pytest.approx(0.7)


def test_absent_class_auc_none_and_macro_over_defined():
    y, p = random_data(n=200, c=4, seed=2)
    keep = y != 3
    y, p = y[keep], p[keep]
    m = compute_metrics(y, p, CLASSES, FAST)
    tb = m["per_class"]["tuberculosis"]
    assert tb["auc"] is None and "absent" in tb["auc_note"]
    assert tb["sensitivity"] is None and tb["support"] == 0
    assert m["macro_auc_classes"] == 3
    assert m["macro_auc"] == pytest.approx(np.mean([roc_auc_score(y == k, p[:, k]) for k in range(3)]))
    present = [0, 1, 2]
    assert m["macro_recall"] == pytest.approx(recall_score(y, p.argmax(1), labels=present, average="macro",
                                                           zero_division=0))
    # a single class present: no AUC at all
    one = compute_metrics(np.zeros(5, int), p[:5], CLASSES, FAST)
    assert one["per_class"]["normal"]["auc"] is None and "only" in one["per_class"]["normal"]["auc_note"]
    assert one["macro_auc"] is None and one["macro_auc_ci_low"] is None
    json.dumps(one, allow_nan=False)


def test_bootstrap_ci_contains_point_and_is_seeded_and_fast():
    y, p = random_data(n=2000, seed=5)
    m = compute_metrics(y, p, CLASSES, FAST)
    for k in ("accuracy", "macro_recall", "macro_auc"):
        assert m[f"{k}_ci_low"] < m[k] < m[f"{k}_ci_high"]
        assert m[f"{k}_ci_high"] - m[f"{k}_ci_low"] < 0.1
    again = compute_metrics(y, p, CLASSES, FAST)
    assert again["accuracy_ci_low"] == m["accuracy_ci_low"] and again["macro_auc_ci_high"] == m["macro_auc_ci_high"]
    other = compute_metrics(y, p, CLASSES, FAST.model_copy(update={"seed": 2}))
    assert other["accuracy_ci_low"] != m["accuracy_ci_low"]
    t = time.perf_counter()
    bootstrap_ci(y, p, 1000, 0.95, 0)
    assert time.perf_counter() - t < 10  # 1000 resamples of 2000 samples, vectorised
    assert compute_metrics(y, p, CLASSES, EvaluateParams(bootstrap=0))["accuracy_ci_low"] is None


def clustered(n_units=40, size=25, seed=0):
    """Images in same-unit clusters that the model gets all right or all wrong (one verdict per patient)."""
    rng = np.random.default_rng(seed)
    unit_right = rng.random(n_units) < 0.7
    y = np.tile(np.arange(size) % 2, n_units)
    right = np.repeat(unit_right, size)
    p = np.full((y.size, 2), 0.1)
    p[np.arange(y.size), np.where(right, y, 1 - y)] = 0.9
    units = np.repeat([f"u{i}" for i in range(n_units)], size)
    return y, p, units


def test_bootstrap_resamples_units_so_same_unit_clusters_widen_the_interval():
    y, p, units = clustered()
    by_unit = bootstrap_ci(y, p, 500, 0.95, 0, units=units)
    by_image = bootstrap_ci(y, p, 500, 0.95, 0)
    for k in ("accuracy", "macro_recall"):
        width_unit = by_unit[k]["high"] - by_unit[k]["low"]
        width_image = by_image[k]["high"] - by_image[k]["low"]
        assert width_unit > 3 * width_image, k
    m = compute_metrics(y, p, ["normal", "pneumonia"], FAST, units=units)
    assert m["bootstrap"]["resampled"] == "split units" and m["bootstrap"]["units"] == 40
    assert m["accuracy_ci_low"] < m["accuracy"] < m["accuracy_ci_high"]


def test_bootstrap_with_one_image_per_unit_is_the_image_bootstrap():
    y, p = random_data(n=300, seed=9)
    units = [f"unit-{i}" for i in range(300)]
    assert bootstrap_ci(y, p, 300, 0.9, 4, units=units) == bootstrap_ci(y, p, 300, 0.9, 4)
    with pytest.raises(ValueError, match="units"):
        bootstrap_ci(y, p, 10, units=units[:5])


def test_paired_difference_is_narrower_than_separate_intervals_for_correlated_models():
    from lungxray.evaluate.metrics import paired_difference

    y, pa = random_data(n=600, seed=11)
    pb = pa.copy()
    flip = np.flatnonzero(pa.argmax(1) == y)[:30]  # model b is wrong on 30 images that a gets right
    pb[flip] = np.roll(pa[flip], 1, axis=1)
    r = paired_difference(y, pa, pb, "accuracy", 500, 0.95, 0)
    assert r["difference"] == pytest.approx(((pa.argmax(1) == y).sum() - (pb.argmax(1) == y).sum()) / 600)
    assert 0 < r["low"] < r["difference"] < r["high"]
    sep_a, sep_b = bootstrap_ci(y, pa, 500)["accuracy"], bootstrap_ci(y, pb, 500)["accuracy"]
    assert sep_a["low"] < sep_b["high"]  # the separate intervals overlap: alone they could not tell a from b
    assert r["high"] - r["low"] < (sep_a["high"] - sep_a["low"]) / 2
    same = paired_difference(y, pa, pa, "macro_auc", 200, units=[i // 3 for i in range(600)])
    assert same["difference"] == 0 and same["low"] == 0 and same["high"] == 0 and same["units"] == 200
    with pytest.raises(ValueError, match="no paired bootstrap"):
        paired_difference(y, pa, pb, "ece", 10)


def test_predictions_table_round_trips_and_aligns_by_id(tmp_path):
    from lungxray.evaluate.metrics import align_predictions, predictions_table

    y, p = random_data(n=20, c=4, seed=12)
    ids = [f"s/{i}" for i in range(20)]
    a = predictions_table(ids, [f"u{i // 2}" for i in range(20)], y, p, CLASSES)
    a.to_csv(tmp_path / "p.csv", index=False)
    back = pd.read_csv(tmp_path / "p.csv", keep_default_na=False, dtype={"id": str, "unit": str, "label": str})
    shuffled = back.sample(frac=1, random_state=0)[["label", "id", "unit"] + [f"prob_{c}" for c in CLASSES[::-1]]]
    yy, pa, pb, units = align_predictions(back, shuffled)
    assert yy.tolist() == y.tolist() and np.allclose(pa, p) and np.allclose(pb, p) and units[3] == "u1"
    with pytest.raises(ValueError, match="different images"):
        align_predictions(back, back.iloc[1:])
    relabelled = back.copy()
    relabelled.loc[0, "label"] = "covid19" if relabelled.loc[0, "label"] != "covid19" else "normal"
    with pytest.raises(ValueError, match="different labels"):
        align_predictions(back, relabelled)


def test_bootstrap_auc_matches_sklearn_on_a_resample():
    """The weighted (multiplicity) AUC equals sklearn's on the materialised resample."""
    from lungxray.evaluate.metrics.bootstrap import bootstrap_counts
    from lungxray.evaluate.metrics.primitives import grouped_auc

    y, p = random_data(n=150, seed=8)
    rng = np.random.default_rng(0)
    w = bootstrap_counts(150, 3, rng)
    for row in w:
        idx = np.repeat(np.arange(150), row.astype(int))
        for k in range(4):
            got = grouped_auc(p[:, k], y == k, row[None, :])[0]
            assert got == pytest.approx(roc_auc_score(y[idx] == k, p[idx, k]))


def test_ece_and_reliability():
    # perfectly confident and right: ECE 0; confident 0.9 but 50% right: ECE 0.4
    y = np.array([0, 1, 0, 1])
    p = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert reliability_data(y, p, 10)["ece"] == pytest.approx(0.0)
    p2 = np.array([[0.9, 0.1]] * 4)
    r = reliability_data(y, p2, 10)
    assert r["ece"] == pytest.approx(0.4)
    assert sum(b["count"] for b in r["bins"]) == 4 and len(r["bins"]) == 10
    full = [b for b in r["bins"] if b["count"]]
    assert len(full) == 1 and full[0]["accuracy"] == 0.5 and full[0]["confidence"] == pytest.approx(0.9)
    assert r["bins"][0]["accuracy"] is None


def test_summary_and_metrics_by_source():
    y, p = random_data(n=240, seed=4)
    src = np.array(["b", "a", "c"] * 80)
    per = metrics_by_source(y, p, list(src), CLASSES, FAST)
    assert list(per) == ["a", "b", "c"]
    for s in per:
        mask = src == s
        assert per[s]["n_samples"] == mask.sum()
        assert per[s]["accuracy"] == pytest.approx(accuracy_score(y[mask], p[mask].argmax(1)))
        assert per[s]["accuracy_ci_low"] is None  # no bootstrap per source by default
    s = summary(compute_metrics(y, p, CLASSES, FAST))
    assert "confusion_matrix" not in s and "reliability" not in s and "per_class" in s


def test_input_validation():
    y, p = random_data(n=10)
    with pytest.raises(ValueError):
        compute_metrics(y, p, CLASSES[:3], FAST)
    with pytest.raises(ValueError):
        compute_metrics(y[:5], p, CLASSES, FAST)


def test_plot_data_and_plots(tmp_path):
    y, p = random_data(n=120, seed=6)
    pts = roc_points(y, p, CLASSES)
    assert list(pts.columns) == ["class", "fpr", "tpr", "threshold"]
    assert set(pts["class"]) == set(CLASSES) and np.isfinite(pts["threshold"]).all()
    pairs = confusion_pairs(y, p.argmax(1), CLASSES)
    assert list(pairs.columns) == ["actual", "predicted"] and len(pairs) == 120
    assert pairs["actual"].iloc[0] == CLASSES[y[0]]
    m = compute_metrics(y, p, CLASSES, FAST)
    cm = m["confusion_matrix"]["matrix"]
    paths = [plot_confusion_matrix(cm, CLASSES, tmp_path / "cm.png"),
             plot_confusion_matrix(cm, CLASSES, tmp_path / "cmn.png", normalize=True),
             plot_roc_curves(y, p, CLASSES, tmp_path / "roc.png"),
             plot_reliability(m["reliability"], tmp_path / "rel.png")]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))




# ---------------------------------------------------------------------------------------------------------------------
# the no-skill line


def test_the_constant_classifiers_score_the_prevalences_macro_recall_1_over_k_and_auc_one_half():
    from lungxray.evaluate.metrics import constant_classifiers

    y = np.array([0] * 234 + [1] * 390)
    base = constant_classifiers(y, ["normal", "pneumonia", "covid19"])
    assert base["majority_class"] == "pneumonia" and base["majority_share"] == 0.625
    assert base["prevalence"] == {"normal": 0.375, "pneumonia": 0.625, "covid19": 0.0}
    assert base["macro_recall"] == 0.5 and base["macro_auc"] == 0.5 and base["n_samples"] == 624
    assert constant_classifiers(np.zeros(0), ["a", "b"]) is None
    assert constant_classifiers(np.zeros(5), ["a", "b"])["macro_auc"] is None  # one class present


def test_the_lift_interval_is_the_paired_difference_with_the_constant_classifier_on_the_accuracy_resamples():
    from lungxray.evaluate.metrics import paired_difference, with_no_skill

    y, p = random_data(n=400, c=2, seed=3, skill=1.0)
    units = [str(i // 3) for i in range(len(y))]
    m = with_no_skill(compute_metrics(y, p, CLASSES[:2], FAST, units), y, p, CLASSES[:2], FAST, units)
    major = m["no_skill"]["majority_class"]
    const = np.zeros_like(p)
    const[:, CLASSES.index(major)] = 1.0
    paired = paired_difference(y, p, const, "accuracy", FAST.bootstrap, FAST.ci, FAST.seed, units)
    assert m["lift_over_majority"] == pytest.approx(m["accuracy"] - m["no_skill"]["majority_share"])
    assert (m["lift_ci_low"], m["lift_ci_high"]) == pytest.approx((paired["low"], paired["high"]), abs=1e-12)
    assert m["no_better_than_majority"] is False and m["accuracy_ci_low"] is not None  # existing keys kept


def test_a_published_figure_equal_to_a_class_share_is_recognised_as_a_constant_classifier():
    from lungxray.evaluate.metrics import constant_classifier_match

    counts = {"normal": 234, "pneumonia": 390}
    assert constant_classifier_match(0.375, counts) == "normal"
    assert constant_classifier_match(0.625, counts) == "pneumonia"
    assert constant_classifier_match(0.795, counts) is None and constant_classifier_match(0.5, {}) is None
