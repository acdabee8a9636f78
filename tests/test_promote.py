from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from lungxray.compare.promote import PromotionParams, decide, rank

from conftest import REPO

P = PromotionParams()
TS = "abc123"
M = "val_macro_recall"


def cand(model, recall, params=1_000_000, version=None, val_set=TS, **kw):
    return {"model": model, "version": version, M: recall, "trainable_parameters": params, "val_set": val_set,
            "test_set": "t1", **kw}


def test_no_champion_promotes_best():
    d = decide([cand("cnn5", 0.80, 500_000, 1), cand("resnet18", 0.91, 11_000_000, 2)], None, P)
    assert d["promote"] and d["best"]["model"] == "resnet18" and d["runner_up"]["model"] == "cnn5"
    assert "no current champion" in d["reason"]
    assert d["champion_after"]["model"] == "resnet18" and d["challenger_after"]["model"] == "cnn5"
    json.dumps(d, allow_nan=False)


def test_beats_champion_by_margin():
    champ = cand("cnn5", 0.880, version=3)
    d = decide([cand("resnet18", 0.912, version=7), cand("cnn8", 0.85, version=8)], champ, P)
    assert d["promote"]
    assert d["reason"].startswith("resnet18 v7 val_macro_recall 0.912 beats champion cnn5 v3 0.88")
    assert "by 0.032 >= margin 0.005" in d["reason"]
    assert d["compared"]["difference"] == pytest.approx(0.032) and d["compared"]["same_selection_set"] is True
    assert d["champion_after"]["version"] == 7 and d["challenger_after"]["model"] == "cnn8"


def test_below_margin_champion_stays_and_best_is_challenger():
    champ = cand("cnn5", 0.880, version=3)
    d = decide([cand("resnet18", 0.883, version=7), cand("cnn8", 0.85, version=8)], champ, P)
    assert not d["promote"]
    assert "does not beat it by the margin 0.005: champion stays" in d["reason"]
    assert d["champion_after"]["version"] == 3 and d["challenger_after"]["model"] == "resnet18"


def test_margin_boundary_float_noise_counts_as_reached():
    champ = cand("cnn5", 0.880, version=3)
    assert decide([cand("resnet18", 0.885, version=7)], champ, P)["promote"]


def test_best_is_already_champion():
    champ = cand("resnet18", 0.90, version=7)
    d = decide([cand("resnet18", 0.91, version=7), cand("cnn5", 0.88, version=8)], champ, P)
    assert not d["promote"] and "already the champion" in d["reason"]
    assert d["champion_after"]["version"] == 7 and d["challenger_after"]["model"] == "cnn5"


def test_a_copy_of_the_champion_registered_from_its_run_is_the_champion_never_the_challenger():
    # a registry filled by an older version: v9 is a second version of the champion's own run (same model)
    champ = cand("resnet18", 0.91, version=7, mlflow_run_id="run-a")
    d = decide([cand("resnet18", 0.91, version=9, mlflow_run_id="run-a"),
                cand("cnn5", 0.88, version=8, mlflow_run_id="run-b")], champ, P)
    assert not d["promote"] and "already the champion" in d["reason"]
    assert d["champion_after"]["version"] == 7 and d["challenger_after"]["model"] == "cnn5"
    promoted = decide([cand("cnn5", 0.95, version=8, mlflow_run_id="run-b"),
                       cand("cnn5", 0.95, version=10, mlflow_run_id="run-b"),
                       cand("cnn8", 0.90, version=11, mlflow_run_id="run-c")], None, P)
    assert promoted["champion_after"]["model"] == "cnn5" and promoted["challenger_after"]["model"] == "cnn8"


def test_champion_remeasured_among_candidates_is_used():
    # the champion's stored number is from old val images, but it was re-evaluated on the current ones
    champ = cand("cnn5", 0.99, version=3, val_set="old")
    d = decide([cand("resnet18", 0.90, version=7), cand("cnn5", 0.80, version=3)], champ, P)
    assert d["promote"] and d["compared"]["champion"] == pytest.approx(0.80)
    assert "re-measured" in d["reason"]


def test_different_val_images_promote_best_and_say_so():
    champ = cand("cnn5", 0.99, version=3, val_set="old")
    d = decide([cand("resnet18", 0.90, version=7)], champ, P)
    assert d["promote"] and "different val images (fingerprint old != abc123)" in d["reason"]
    assert d["compared"]["same_selection_set"] is False and d["compared"]["champion"] is None
    assert d["compared"]["method"] == "set_changed"
    keep = decide([cand("resnet18", 0.90, version=7)], champ, P.model_copy(update={"on_set_change":
                                                                                     "keep_champion"}))
    assert not keep["promote"] and keep["champion_after"]["version"] == 3


def test_unknown_fingerprint_is_treated_as_different():
    champ = cand("cnn5", 0.99, version=3, val_set=None)
    d = decide([cand("resnet18", 0.90, version=7)], champ, P)
    assert d["promote"] and "unknown" in d["reason"]


def test_candidates_on_different_val_sets_raise():
    with pytest.raises(ValueError, match="different val sets"):
        decide([cand("a", 0.9, val_set="x"), cand("b", 0.8, val_set="y")], None, P)


def test_no_valid_candidate():
    champ = cand("cnn5", 0.88, version=3)
    d = decide([cand("broken", None), cand("nan", float("nan"))], champ, P)
    assert not d["promote"] and d["best"] is None and len(d["excluded"]) == 2
    assert d["champion_after"]["version"] == 3
    json.dumps(d, allow_nan=False)


def test_ties_go_to_fewer_parameters_then_name():
    c = [cand("vgg16", 0.9, 134e6), cand("resnet18", 0.9 + 1e-12, 11e6), cand("alexnet", 0.9, 11e6),
         cand("cnn5", 0.95, 5e8)]
    assert [x["model"] for x in rank(c, P)] == ["cnn5", "alexnet", "resnet18", "vgg16"]


def test_lower_is_better_metric():
    p = PromotionParams(metric="test_ece", higher_is_better=False, min_improvement=0.01)
    champ = {"model": "cnn5", "version": 1, "test_ece": 0.08, "test_set": TS}
    c = [{"model": "a", "version": 2, "test_ece": 0.05, "test_set": TS},
         {"model": "b", "version": 3, "test_ece": 0.03, "test_set": TS}]
    d = decide(c, champ, p)
    assert d["promote"] and d["best"]["model"] == "b" and d["compared"]["difference"] == pytest.approx(0.05)
    assert not decide([{"model": "a", "version": 2, "test_ece": 0.075, "test_set": TS}], champ, p)["promote"]


def test_zero_margin_exact_tie_goes_by_rule():
    p = P.model_copy(update={"min_improvement": 0.0})
    champ = cand("big", 0.9, 1e8, version=1)
    assert decide([cand("small", 0.9, 1e6, version=2)], champ, p)["promote"]
    assert not decide([cand("bigger", 0.9, 1e9, version=2)], champ, p)["promote"]


# ---------------------------------------------------------------------------------------------------------------------
# selection on val, paired bootstrap against the champion


def test_the_champion_is_chosen_on_a_val_metric_by_default_and_in_every_profile():
    assert PromotionParams().metric.startswith("val_")
    for f in ("params.yaml", "configs/shared-data.yaml", "configs/pneumoniamnist.yaml"):
        metric = yaml.safe_load((REPO / f).read_text())["promote"].get("metric", PromotionParams().metric)
        assert metric.startswith("val_"), f


def preds(correct: np.ndarray, units=None) -> "pd.DataFrame":  # noqa: F821
    """Val predictions over len(correct) images (labels alternate normal / pneumonia), right where ``correct``."""
    from lungxray.evaluate.metrics import predictions_table

    n = len(correct)
    y = np.arange(n) % 2
    hit = np.where(correct, y, 1 - y)
    probs = np.full((n, 2), 0.2)
    probs[np.arange(n), hit] = 0.8
    ids = [f"img{i:03d}" for i in range(n)]
    return predictions_table(ids, units or ids, y, probs, ["normal", "pneumonia"])


def paired_pair(champ_right: np.ndarray, best_right: np.ndarray, **kw):
    best = cand("resnet18", float(best_right.mean()), version=7, predictions=preds(best_right, **kw))
    champ = cand("cnn5", float(champ_right.mean()), version=3, predictions=preds(champ_right, **kw))
    return best, champ


def test_a_clear_paired_improvement_is_promoted_and_the_difference_and_interval_are_recorded():
    rng = np.random.default_rng(0)
    champ_right = rng.random(400) < 0.75
    best_right = champ_right | (rng.random(400) < 0.5)  # right wherever the champion is, and on half the rest
    best, champ = paired_pair(champ_right, best_right)
    d = decide([best], champ, P)
    c = d["compared"]
    assert d["promote"] and c["method"] == "paired_bootstrap"
    assert c["difference"] == pytest.approx(best_right.mean() - champ_right.mean())
    assert 0 < c["difference_ci_low"] < c["difference"] < c["difference_ci_high"]
    assert c["resamples"] == P.bootstrap and c["units"] == 400 and c["images"] == 400
    assert "paired difference" in d["reason"] and "promoted" in d["reason"]
    json.dumps(d, allow_nan=False)  # what promotion.json receives: no predictions table in it
    assert "predictions" not in d["best"] and "predictions" not in d["champion_before"]


def test_a_gain_above_the_margin_that_resampling_can_erase_keeps_the_champion():
    # the models disagree on 9 of 200 images: 6 go to the challenger, 3 to the champion (+0.015 > margin 0.005)
    champ_right = np.ones(200, bool)
    best_right = np.ones(200, bool)
    best_right[:3] = False
    champ_right[10:16] = False
    best, champ = paired_pair(champ_right, best_right)
    d = decide([best], champ, P)
    c = d["compared"]
    assert c["method"] == "paired_bootstrap" and c["difference"] > P.min_improvement
    assert c["difference_ci_low"] <= 0 < c["difference_ci_high"]
    assert not d["promote"] and "interval reaches 0" in d["reason"] and d["champion_after"]["version"] == 3
    # the same numbers without the paired evidence pass the plain margin
    unpaired = decide([{**best, "predictions": None}], {**champ, "predictions": None}, P)
    assert unpaired["promote"] and unpaired["compared"]["method"] == "unpaired_margin"


def test_a_paired_difference_below_the_margin_keeps_the_champion():
    champ_right = np.ones(400, bool)
    champ_right[:40] = False
    best_right = champ_right.copy()
    best_right[0] = True  # +0.0025 on every resample that holds image 0, never negative
    best, champ = paired_pair(champ_right, best_right)
    d = decide([best], champ, P)
    assert not d["promote"] and "below the margin" in d["reason"]
    assert d["compared"]["difference_ci_low"] >= 0


def test_the_paired_interval_resamples_split_units():
    rng = np.random.default_rng(1)
    units = [f"patient{i // 20}" for i in range(400)]  # 20 images per patient, one verdict per patient
    champ_right = np.repeat(rng.random(20) < 0.6, 20)
    best_right = np.repeat(rng.random(20) < 0.8, 20) | champ_right
    best_u, champ_u = paired_pair(champ_right, best_right, units=units)
    best_i, champ_i = paired_pair(champ_right, best_right)
    by_unit, by_image = decide([best_u], champ_u, P)["compared"], decide([best_i], champ_i, P)["compared"]
    assert by_unit["units"] == 20 and by_image["units"] == 400
    width = lambda c: c["difference_ci_high"] - c["difference_ci_low"]  # noqa: E731
    assert width(by_unit) > 2 * width(by_image)


def test_champion_without_predictions_falls_back_to_the_unpaired_margin_and_says_why():
    best = cand("resnet18", 0.912, version=7, predictions=preds(np.ones(10, bool)))
    d = decide([best], cand("cnn5", 0.88, version=3), P)
    c = d["compared"]
    assert d["promote"] and c["method"] == "unpaired_margin" and "cannot be found" in c["paired_unavailable"]
    assert "unpaired margin rule" in d["reason"] and c["difference_ci_low"] is None


def test_champion_predictions_over_other_images_are_not_paired():
    best = cand("resnet18", 0.9, version=7, predictions=preds(np.ones(10, bool)))
    champ = cand("cnn5", 0.8, version=3, predictions=preds(np.ones(12, bool)))
    c = decide([best], champ, P)["compared"]
    assert c["method"] == "unpaired_margin" and "different images" in c["paired_unavailable"]


# ---------------------------------------------------------------------------------------------------------------------
# properties

metric = st.one_of(st.sampled_from([0.5, 0.8, 0.8 + 1e-10, 0.9, 0.905]), st.floats(0, 1, allow_nan=False))
candidate = st.builds(lambda m, r, n, v: cand(m, r, n, version=v),
                      st.sampled_from(["cnn5", "cnn8", "resnet18", "vgg16", "mobilenetv2"]), metric,
                      st.sampled_from([5e5, 1e6, 1.1e7, 1.3e8]), st.integers(1, 50))
champion = st.one_of(st.none(), candidate, candidate.map(lambda c: {**c, "val_set": "other"}))
params = st.builds(PromotionParams, min_improvement=st.sampled_from([0.0, 0.005, 0.02]),
                   higher_is_better=st.booleans())


def _strip(d):
    return json.dumps(d, sort_keys=True, default=str)


@settings(max_examples=150, deadline=None)
@given(st.lists(candidate, min_size=1, max_size=6), champion, params, st.randoms(use_true_random=False))
def test_decision_independent_of_candidate_order(cands, champ, p, rnd):
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    assert _strip(decide(cands, champ, p)) == _strip(decide(shuffled, champ, p))
    assert [_strip(x) for x in rank(cands, p)] == [_strip(x) for x in rank(shuffled, p)]


@settings(max_examples=200, deadline=None)
@given(st.lists(candidate, min_size=1, max_size=6), candidate, params)
def test_never_promotes_worse_than_champion_and_respects_margin(cands, champ, p):
    d = decide(cands, champ, p)
    best = d["best"][M]
    assert best == (max if p.higher_is_better else min)(c[M] for c in cands) or \
        abs(best - (max if p.higher_is_better else min)(c[M] for c in cands)) <= p.tie_tolerance
    if d["promote"]:
        gain = best - champ[M] if p.higher_is_better else champ[M] - best
        remeasured = [c for c in cands if (c["model"], c["version"]) == (champ["model"], champ["version"])]
        if not remeasured:
            assert gain >= p.min_improvement - p.tie_tolerance
            assert gain >= -p.tie_tolerance  # never worse than the champion
        assert d["champion_after"]["model"] == d["best"]["model"]
    else:
        assert d["champion_after"] == d["champion_before"]
    # the challenger is never the champion after the decision
    if d["challenger_after"] is not None:
        ch, ca = d["challenger_after"], d["champion_after"]
        assert ca is None or (ch["model"], ch["version"]) != (ca["model"], ca["version"])


@settings(max_examples=100, deadline=None)
@given(st.lists(candidate, min_size=2, max_size=6), params)
def test_rank_is_sorted_by_metric_up_to_tolerance(cands, p):
    r = rank(cands, p)
    sign = 1 if p.higher_is_better else -1
    vals = [sign * c[M] for c in r]
    for a, b in zip(vals, vals[1:]):
        assert a >= b - p.tie_tolerance
