from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lungxray.promote import PromotionParams, decide, rank

P = PromotionParams()
TS = "abc123"


def cand(model, recall, params=1_000_000, version=None, test_set=TS, **kw):
    return {"model": model, "version": version, "test_macro_recall": recall, "trainable_parameters": params,
            "test_set": test_set, **kw}


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
    assert d["reason"].startswith("resnet18 v7 test_macro_recall 0.912 beats champion cnn5 v3 0.88")
    assert "by 0.032 >= margin 0.005" in d["reason"]
    assert d["compared"]["difference"] == pytest.approx(0.032) and d["compared"]["same_test_set"] is True
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


def test_champion_remeasured_among_candidates_is_used():
    # the champion's stored number is from an old test set, but it was re-evaluated on the current one
    champ = cand("cnn5", 0.99, version=3, test_set="old")
    d = decide([cand("resnet18", 0.90, version=7), cand("cnn5", 0.80, version=3)], champ, P)
    assert d["promote"] and d["compared"]["champion"] == pytest.approx(0.80)
    assert "re-measured" in d["reason"]


def test_different_test_set_promotes_best_and_says_so():
    champ = cand("cnn5", 0.99, version=3, test_set="old")
    d = decide([cand("resnet18", 0.90, version=7)], champ, P)
    assert d["promote"] and "different test set (fingerprint old != abc123)" in d["reason"]
    assert d["compared"]["same_test_set"] is False and d["compared"]["champion"] is None
    keep = decide([cand("resnet18", 0.90, version=7)], champ, P.model_copy(update={"on_test_set_change":
                                                                                     "keep_champion"}))
    assert not keep["promote"] and keep["champion_after"]["version"] == 3


def test_unknown_fingerprint_is_treated_as_different():
    champ = cand("cnn5", 0.99, version=3, test_set=None)
    d = decide([cand("resnet18", 0.90, version=7)], champ, P)
    assert d["promote"] and "unknown" in d["reason"]


def test_candidates_on_different_test_sets_raise():
    with pytest.raises(ValueError, match="different test sets"):
        decide([cand("a", 0.9, test_set="x"), cand("b", 0.8, test_set="y")], None, P)


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
# properties

metric = st.one_of(st.sampled_from([0.5, 0.8, 0.8 + 1e-10, 0.9, 0.905]), st.floats(0, 1, allow_nan=False))
candidate = st.builds(lambda m, r, n, v: cand(m, r, n, version=v),
                      st.sampled_from(["cnn5", "cnn8", "resnet18", "vgg16", "mobilenetv2"]), metric,
                      st.sampled_from([5e5, 1e6, 1.1e7, 1.3e8]), st.integers(1, 50))
champion = st.one_of(st.none(), candidate, candidate.map(lambda c: {**c, "test_set": "other"}))
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
    best = d["best"]["test_macro_recall"]
    assert best == (max if p.higher_is_better else min)(c["test_macro_recall"] for c in cands) or \
        abs(best - (max if p.higher_is_better else min)(c["test_macro_recall"] for c in cands)) <= p.tie_tolerance
    if d["promote"]:
        gain = best - champ["test_macro_recall"] if p.higher_is_better else champ["test_macro_recall"] - best
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
    vals = [sign * c["test_macro_recall"] for c in r]
    for a, b in zip(vals, vals[1:]):
        assert a >= b - p.tie_tolerance
