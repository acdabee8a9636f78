"""Champion / challenger decision: which evaluated model becomes the registry's champion. Pure functions.

The champion is chosen on the **validation** split; the test split is reported once, never used to choose (the best
of several noisy test scores is an optimistic figure, and a test set used for selection no longer tests).

The order (also the leaderboard's, :func:`rank`):

1. the selection metric (``params.metric``, default ``val_macro_recall``) in its direction;
2. values within ``tie_tolerance`` of each other tie, and ties go to fewer ``trainable_parameters`` (the
   ``tie_breaker``; lower wins; a missing value loses);
3. then the model name, then the version (only so that the order is total and reproducible).

Ties are resolved deterministically whatever the input order: candidates are first sorted exactly, then grouped
(a group starts at a candidate more than ``tie_tolerance`` below the group's first), and each group is re-sorted by
the tie breaker. Candidates without a finite metric are ranked last and never promoted (listed in ``excluded``).

:func:`decide` then compares the best candidate with the current champion on the images of the metric's split (val),
recognised by their fingerprint (``val_set``: ids and labels). ``compared.method`` in the decision says which rule
applied:

* no champion: the best is promoted ("no current champion");
* the best *is* the champion (same model and registry version, or the same model registered again from the
  champion's MLflow run: a copy): nothing to do;
* ``paired_bootstrap`` (the normal case): the champion was measured on the same val images (equal fingerprints, or it
  was re-measured among the candidates) and both models' per-image predictions are at hand (``predictions``: the
  candidate's from its evaluation, the champion's logged with its registered version). The difference
  d = metric(best) - metric(champion) is computed on the same images, and its percentile interval (level ``ci``) from
  ``bootstrap`` resamples of the split units in which both models are scored on the same resampled units (``seed``).
  **The best is promoted when d >= ``min_improvement`` and the interval's lower bound is above 0**: the gain must be
  large enough to matter and must not vanish when other val units are drawn. Otherwise the champion stays (an
  exact tie included: the incumbent keeps its place). Available for the higher-is-better ``accuracy``,
  ``macro_recall`` and ``macro_auc`` of val (or test).
* ``unpaired_margin`` (fallback when the val images are the same but the paired comparison is impossible: the
  champion's predictions cannot be found, e.g. it was registered before they were logged, or the metric has no paired
  bootstrap; ``compared.paired_unavailable`` says why): the best is promoted only when its value beats the
  champion's by at least ``min_improvement`` (``tie_tolerance`` absorbs float noise) and ranks before it under the
  rule (so with a zero margin an exact tie is won by the smaller model);
* ``set_changed``: the champion was measured on different (or unknown) val images, so its metric on the current
  images is unknown and nothing can be compared. ``on_set_change="promote_best"`` (default) promotes the best
  candidate, which *was* measured on them, and says so in the reason; ``"keep_champion"`` keeps the champion until
  someone re-evaluates it.

The challenger after the decision is the best candidate that is not the champion after it (nor a copy of it): the
runner-up when the best was promoted, otherwise the best candidate (or the runner-up when the best is the champion
itself).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from lungxray.core.config import Strict
from lungxray.core.numbers import finite
from lungxray.evaluate.metrics import BOOTSTRAP_STATISTICS, align_predictions, paired_difference

__all__ = ["PromotionParams", "rank", "decide", "selection_split"]

SPLIT_PREFIXES = ("val", "test")


class PromotionParams(Strict):

    registered_model: str = Field("lungxray-cxr", description="name of the model in the MLflow model registry")
    metric: str = Field("val_macro_recall", description="selection metric: '<split>_<statistic>' of the leaderboard "
                                                        "rows; a val metric (test figures are reported, not used)")
    higher_is_better: bool = Field(True, description="direction of metric (false: lower wins)")
    tie_breaker: str = Field("trainable_parameters", description="leaderboard column that settles ties (within "
                                                                 "tie_tolerance): lower wins, then the name")
    min_improvement: float = Field(0.005, ge=0, description="margin by which the best must beat the champion")
    tie_tolerance: float = Field(1e-9, ge=0, description="metric values this close tie (absorbs float noise)")
    bootstrap: int = Field(2000, ge=1, description="paired bootstrap resamples (of split units) for the difference "
                                                   "between the best candidate and the champion")
    ci: float = Field(0.95, gt=0, lt=1, description="confidence level of the difference's interval")
    seed: int = Field(0, description="seed of the paired bootstrap")
    on_set_change: Literal["promote_best", "keep_champion"] = Field(
        "promote_best", description="when the champion was measured on other val images (fingerprint differs)")


def selection_split(params: PromotionParams) -> str:
    """The split the selection metric is measured on (``val`` for ``val_macro_recall``; ``val`` when it names none)."""
    head = params.metric.split("_", 1)[0]
    return head if head in SPLIT_PREFIXES else "val"


def _paired_statistic(p: PromotionParams) -> str | None:
    head, _, stat = p.metric.partition("_")
    return stat if head in SPLIT_PREFIXES and stat in BOOTSTRAP_STATISTICS and p.higher_is_better else None


def _score(c: dict, p: PromotionParams) -> float | None:
    """The metric oriented so that larger is better (None when missing)."""
    v = finite(c.get(p.metric))
    return None if v is None else (v if p.higher_is_better else -v)


def _tie(c: dict, p: PromotionParams) -> float:
    v = finite(c.get(p.tie_breaker))
    return math.inf if v is None else v


def _ident(c: dict) -> tuple[str, str]:
    return str(c.get("model", "")), "" if c.get("version") is None else str(c.get("version"))


def _exact_key(c: dict, p: PromotionParams):
    return (-_score(c, p), _tie(c, p), *_ident(c))


def rank(candidates: list[dict[str, Any]], params: PromotionParams | None = None) -> list[dict[str, Any]]:
    """Candidates in the rule's order (best first); those without a finite metric last, by name. Inputs untouched."""
    p = params or PromotionParams()
    valid = sorted((c for c in candidates if _score(c, p) is not None), key=lambda c: _exact_key(c, p))
    invalid = sorted((c for c in candidates if _score(c, p) is None), key=_ident)
    out: list[dict] = []
    group: list[dict] = []
    for c in valid:
        if group and _score(group[0], p) - _score(c, p) > p.tie_tolerance:
            out.extend(sorted(group, key=lambda g: (_tie(g, p), *_ident(g))))
            group = []
        group.append(c)
    out.extend(sorted(group, key=lambda g: (_tie(g, p), *_ident(g))))
    return out + invalid


def _brief(c: dict | None, p: PromotionParams) -> dict | None:
    """A candidate as JSON-able scalars (its predictions table left out)."""
    if c is None:
        return None
    keys = ["model", "version", p.metric, p.tie_breaker, f"{selection_split(p)}_set", "test_set"]
    out = {k: c.get(k) for k in keys}
    out.update({k: v for k, v in c.items() if k not in out and isinstance(v, (str, int, float, bool, type(None)))})
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def _name(c: dict) -> str:
    v = c.get("version")
    return f"{c.get('model')}" + ("" if v is None else f" v{v}")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:g}"


def _same_model(a: dict, b: dict) -> bool:
    """The same registry entry (model and version), or a copy of it: the same model registered again from the same
    MLflow run (``mlflow_run_id``), as an older version of the register stage did on every rerun."""
    run = a.get("mlflow_run_id")
    return _ident(a) == _ident(b) or (run is not None and run == b.get("mlflow_run_id")
                                      and a.get("model") == b.get("model"))


def _same_entry(a: dict | None, b: dict | None) -> bool:
    return (a is not None and b is not None and a.get("version") is not None and b.get("version") is not None
            and _same_model(a, b))


def _paired(best: dict, ref: dict, p: PromotionParams) -> tuple[dict | None, str | None]:
    """The paired bootstrap of metric(best) - metric(ref), or None and why it cannot be computed."""
    stat, split = _paired_statistic(p), selection_split(p)
    if stat is None:
        return None, (f"{p.metric} has no paired bootstrap (only higher-is-better "
                      f"{', '.join(f'<split>_{s}' for s in BOOTSTRAP_STATISTICS)})")
    if best.get("predictions") is None:
        return None, f"the {split} predictions of {_name(best)} are missing"
    if ref.get("predictions") is None:
        return None, (f"the champion's {split} predictions cannot be found (registered before predictions were "
                      f"logged, or its artifact is gone)")
    try:
        y, pa, pb, units = align_predictions(best["predictions"], ref["predictions"])
    except ValueError as e:
        return None, f"the champion's {split} predictions do not pair with {_name(best)}'s: {e}"
    return paired_difference(y, pa, pb, stat, p.bootstrap, p.ci, p.seed, units=units), None


def decide(candidates: list[dict[str, Any]], current_champion: dict[str, Any] | None,
           params: PromotionParams | None = None) -> dict[str, Any]:
    """The promotion decision (JSON-able); see the module docstring for the rule.

    Candidates and the champion are dicts with ``model``, ``version``, the metric, the tie breaker, the fingerprints
    ``val_set`` / ``test_set`` and, for the paired comparison, ``predictions`` (a
    :func:`lungxray.evaluate.metrics.predictions_table` of the selection split).

    Keys: ``promote`` (bool), ``reason`` (text), ``best``, ``runner_up``, ``champion_before``, ``champion_after``,
    ``challenger_after`` (candidate dicts or None), ``compared`` (the rule that applied as ``method``, metric,
    direction, values, difference with its paired interval, margin, fingerprints of the selection split and of the
    test split), ``ranking`` (compact ordered list), ``excluded`` (candidates without the metric), ``params``.

    Raises ValueError when the valid candidates carry different known fingerprints of the selection split (their
    numbers are not comparable to one another).
    """
    p = params or PromotionParams()
    ordered = rank(candidates, p)
    valid = [c for c in ordered if _score(c, p) is not None]
    split = selection_split(p)
    fps = sorted({str(c[f"{split}_set"]) for c in valid if c.get(f"{split}_set") is not None})
    if len(fps) > 1:
        raise ValueError(f"candidates were evaluated on different {split} sets ({', '.join(fps)}): not comparable")
    champ = current_champion
    compared = _blank_comparison(valid, champ, split, fps, p)
    base = {"best": None, "runner_up": None, "champion_before": _brief(champ, p),
            "ranking": [{"rank": i + 1, "model": c.get("model"), "version": c.get("version"),
                         p.metric: finite(c.get(p.metric)), p.tie_breaker: c.get(p.tie_breaker)}
                        for i, c in enumerate(valid)],
            "excluded": [_brief(c, p) for c in ordered if _score(c, p) is None], "params": p.model_dump()}
    if not valid:
        return {**base, "promote": False, "champion_after": _brief(champ, p), "challenger_after": None,
                "reason": f"no candidate has a finite {p.metric}: nothing to promote" + (
                    f"; champion {_name(champ)} stays" if champ else ""), "compared": compared}

    best = valid[0]
    base.update(best=_brief(best, p), runner_up=_brief(valid[1] if len(valid) > 1 else None, p))
    compared["best"] = finite(best.get(p.metric))

    def result(promote: bool, reason: str, **comp) -> dict:
        after = best if promote else champ
        # the best candidate that is not the champion after the decision, nor a copy of it (:func:`_same_model`)
        challenger = next((c for c in valid if after is None or not _same_model(c, after)), None)
        return {**base, "promote": promote, "reason": reason, "champion_after": _brief(after, p),
                "challenger_after": _brief(challenger, p), "compared": {**compared, **comp}}

    if champ is None:
        return result(True, f"no current champion: {_name(best)} ({p.metric} {_fmt(compared['best'])}) is promoted",
                      method="no_champion")
    if _same_entry(best, champ):
        return result(False, f"the best candidate {_name(best)} ({p.metric} {_fmt(compared['best'])}) is already "
                             f"the champion", method="already_champion", champion=compared["best"], difference=0.0,
                      same_selection_set=True)
    return _against_champion(best, champ, valid, compared, p, result)


def _blank_comparison(valid: list[dict], champ: dict | None, split: str, fps: list[str],
                      p: PromotionParams) -> dict[str, Any]:
    """The ``compared`` entry before any rule applied: the metric, the params and the fingerprints (``fps``: the
    selection sets of the valid candidates)."""
    return {"metric": p.metric, "direction": "higher" if p.higher_is_better else "lower", "method": None,
            "best": None, "champion": None, "difference": None, "difference_ci_low": None,
            "difference_ci_high": None, "ci": p.ci, "resamples": None, "units": None, "images": None,
            "paired_unavailable": None, "min_improvement": p.min_improvement, "selection_split": split,
            "selection_set": fps[0] if fps else None,
            "champion_selection_set": None if champ is None else champ.get(f"{split}_set"),
            "same_selection_set": None, "test_set": next((c["test_set"] for c in valid if c.get("test_set")), None)}


def _against_champion(best: dict, champ: dict, valid: list[dict], compared: dict, p: PromotionParams, result):
    """Compare the best with a champion that is another entry: paired bootstrap, else unpaired margin, else the
    fingerprints differ (see the module docstring)."""
    split = compared["selection_split"]
    remeasured = next((c for c in valid if _same_entry(c, champ)), None)
    champ_fp, fp = compared["champion_selection_set"], compared["selection_set"]
    same = fp is not None and champ_fp is not None and str(champ_fp) == fp
    if remeasured is not None:
        ref, where, same = remeasured, f"re-measured on the current {split} images", True
    else:
        ref, where = (champ, f"same {split} images") if same else (None, None)
    if ref is None:
        why = (f"the champion {_name(champ)} was measured on different {split} images (fingerprint {champ_fp} != "
               f"{fp})" if champ_fp is not None and fp is not None else
               f"the {split}-set fingerprint of the champion {_name(champ)} ({champ_fp}) or of the candidates ({fp}) "
               f"is unknown")
        return _set_changed(best, why, compared, p, result, same)
    paired, unavailable = _paired(best, ref, p)
    if paired is not None:
        return _paired_rule(best, champ, paired, where, p, result, same)
    if finite(ref.get(p.metric)) is None:
        return _set_changed(best, f"the champion {_name(champ)} has no {p.metric}", compared, p, result, same,
                            paired_unavailable=unavailable)
    return _unpaired_rule(best, champ, ref, where, compared, p, result, same, unavailable)


def _set_changed(best: dict, why: str, compared: dict, p: PromotionParams, result, same: bool, **extra) -> dict:
    split, best_v = compared["selection_split"], compared["best"]
    comp = dict(method="set_changed", same_selection_set=same, **extra)
    if p.on_set_change == "promote_best":
        return result(True, f"{why}, so its {p.metric} on the current {split} images is unknown: promoting the best "
                            f"candidate measured on them, {_name(best)} ({_fmt(best_v)})", **comp)
    return result(False, f"{why}, so its {p.metric} on the current {split} images is unknown: champion stays "
                         f"(on_set_change=keep_champion); best candidate {_name(best)} ({_fmt(best_v)})", **comp)


def _paired_rule(best: dict, champ: dict, r: dict, where: str, p: PromotionParams, result, same: bool) -> dict:
    d, lo, hi = r["difference"], r["low"], r["high"]
    comp = dict(method="paired_bootstrap", best=r["a"], champion=r["b"], difference=d, difference_ci_low=lo,
                difference_ci_high=hi, resamples=r["resamples"], units=r["units"], images=r["images"],
                same_selection_set=same)
    desc = (f"{_name(best)} {p.metric} {_fmt(r['a'])} vs champion {_name(champ)} {_fmt(r['b'])} ({where}): paired "
            f"difference {_fmt(d)} [{_fmt(lo)}, {_fmt(hi)}] ({p.ci:.0%} interval, {r['resamples']} resamples of "
            f"{r['units']} units)")
    if d is None or d < p.min_improvement - p.tie_tolerance:
        return result(False, f"{desc}: below the margin {_fmt(p.min_improvement)}: champion stays", **comp)
    if lo is None or lo <= 0:
        return result(False, f"{desc}: the interval reaches 0, so the gain may be resampling noise: champion stays",
                      **comp)
    return result(True, f"{desc} >= margin {_fmt(p.min_improvement)} and above 0: promoted", **comp)


def _unpaired_rule(best: dict, champ: dict, ref: dict, where: str, compared: dict, p: PromotionParams, result,
                   same: bool, unavailable: str | None) -> dict:
    best_v, champ_v = compared["best"], finite(ref.get(p.metric))
    diff = best_v - champ_v if p.higher_is_better else champ_v - best_v
    comp = dict(method="unpaired_margin", champion=champ_v, difference=diff, same_selection_set=same,
                paired_unavailable=unavailable)
    margin_ok = diff >= p.min_improvement - p.tie_tolerance
    # with a zero margin the rule itself must prefer the best (an exact tie goes to the smaller model)
    champ_entry = {**champ, p.metric: champ_v, p.tie_breaker: ref.get(p.tie_breaker, champ.get(p.tie_breaker))}
    rule_ok = rank([best, champ_entry], p)[0] is best
    verb = "beats" if diff > p.tie_tolerance else ("ties" if abs(diff) <= p.tie_tolerance else "is below")
    desc = (f"{_name(best)} {p.metric} {_fmt(best_v)} {verb} champion {_name(champ)} {_fmt(champ_v)} ({where}) "
            f"by {_fmt(diff)}")
    note = f" (unpaired margin rule: {unavailable})"
    if margin_ok and rule_ok:
        return result(True, f"{desc} >= margin {_fmt(p.min_improvement)}: promoted{note}", **comp)
    if margin_ok:
        return result(False, f"{desc}; tie goes to the champion by {p.tie_breaker}: champion stays{note}", **comp)
    return result(False, f"{desc}: does not beat it by the margin {_fmt(p.min_improvement)}: champion stays{note}",
                  **comp)
