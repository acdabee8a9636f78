"""Champion / challenger decision: which evaluated model becomes the registry's champion. Pure functions.

The rule (also the leaderboard's order, :func:`rank`):

1. the primary metric (``params.metric``, default ``test_macro_recall``) in its direction;
2. values within ``tie_tolerance`` of each other tie, and ties go to fewer ``trainable_parameters`` (the
   ``tie_breaker``; lower wins; a missing value loses);
3. then the model name, then the version (only so that the order is total and reproducible).

Ties are resolved deterministically whatever the input order: candidates are first sorted exactly, then grouped
(a group starts at a candidate more than ``tie_tolerance`` below the group's first), and each group is re-sorted by
the tie breaker. Candidates without a finite metric are ranked last and never promoted (listed in ``excluded``).

:func:`decide` then compares the best candidate with the current champion:

* no champion: the best is promoted ("no current champion");
* the best *is* the champion (same model and registry version): nothing to do;
* champion measured on the same test split (equal, known ``test_set`` fingerprints), or re-measured among the
  candidates (same model and version): the best is promoted only when it beats the champion by at least
  ``min_improvement`` (in the metric's direction; ``tie_tolerance`` absorbs float noise) and ranks before it under the
  rule (so with a zero margin an exact tie is won by the smaller model);
* champion measured on a different (or unknown) test split: the numbers are not comparable, so the champion's
  metric on the current test split is unknown. ``on_test_set_change="promote_best"`` (default) promotes the best
  candidate, which *was* measured on the current split, and says so in the reason; ``"keep_champion"`` keeps the
  champion until someone re-evaluates it.

The challenger after the decision is the best candidate that is not the champion after it: the runner-up when the
best was promoted, otherwise the best candidate (or the runner-up when the best is the champion itself).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PromotionParams", "rank", "decide"]


class PromotionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    registered_model: str = "lungxray-cxr"
    metric: str = "test_macro_recall"
    higher_is_better: bool = True
    tie_breaker: str = Field("trainable_parameters", description="lower wins")
    min_improvement: float = Field(0.005, ge=0, description="margin by which the best must beat the champion")
    tie_tolerance: float = Field(1e-9, ge=0)
    on_test_set_change: Literal["promote_best", "keep_champion"] = "promote_best"


def _num(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _score(c: dict, p: PromotionParams) -> float | None:
    """The metric oriented so that larger is better (None when missing)."""
    v = _num(c.get(p.metric))
    return None if v is None else (v if p.higher_is_better else -v)


def _tie(c: dict, p: PromotionParams) -> float:
    v = _num(c.get(p.tie_breaker))
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
    if c is None:
        return None
    keys = ["model", "version", p.metric, p.tie_breaker, "test_set"]
    out = {k: c.get(k) for k in keys}
    out.update({k: v for k, v in c.items() if k not in out and isinstance(v, (str, int, float, bool, type(None)))})
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def _name(c: dict) -> str:
    v = c.get("version")
    return f"{c.get('model')}" + ("" if v is None else f" v{v}")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:g}"


def _same_entry(a: dict | None, b: dict | None) -> bool:
    return (a is not None and b is not None and a.get("version") is not None and b.get("version") is not None
            and _ident(a) == _ident(b))


def decide(candidates: list[dict[str, Any]], current_champion: dict[str, Any] | None,
           params: PromotionParams | None = None) -> dict[str, Any]:
    """The promotion decision (JSON-able); see the module docstring for the rule.

    Keys: ``promote`` (bool), ``reason`` (text), ``best``, ``runner_up``, ``champion_before``, ``champion_after``,
    ``challenger_after`` (candidate dicts or None), ``compared`` (metric, direction, values, difference, margin,
    test-set fingerprints and whether they match), ``ranking`` (compact ordered list), ``excluded`` (candidates
    without the metric), ``params``.

    Raises ValueError when the valid candidates carry different known ``test_set`` fingerprints (their numbers are
    not comparable to one another).
    """
    p = params or PromotionParams()
    ordered = rank(candidates, p)
    valid = [c for c in ordered if _score(c, p) is not None]
    excluded = [_brief(c, p) for c in ordered if _score(c, p) is None]
    fps = sorted({str(c["test_set"]) for c in valid if c.get("test_set") is not None})
    if len(fps) > 1:
        raise ValueError(f"candidates were evaluated on different test sets ({', '.join(fps)}): not comparable")
    test_set = fps[0] if fps else None
    direction = "higher" if p.higher_is_better else "lower"
    ranking = [{"rank": i + 1, "model": c.get("model"), "version": c.get("version"), p.metric: _num(c.get(p.metric)),
                p.tie_breaker: c.get(p.tie_breaker)} for i, c in enumerate(valid)]
    champ = current_champion
    base = {"best": None, "runner_up": None, "champion_before": _brief(champ, p), "ranking": ranking,
            "excluded": excluded, "params": p.model_dump()}

    if not valid:
        return {**base, "promote": False, "champion_after": _brief(champ, p), "challenger_after": None,
                "reason": f"no candidate has a finite {p.metric}: nothing to promote" + (
                    f"; champion {_name(champ)} stays" if champ else ""),
                "compared": {"metric": p.metric, "direction": direction, "best": None, "champion": None,
                             "difference": None, "min_improvement": p.min_improvement, "test_set": test_set,
                             "champion_test_set": None if champ is None else champ.get("test_set"),
                             "same_test_set": None}}

    best = valid[0]
    runner_up = valid[1] if len(valid) > 1 else None
    best_v = _num(best.get(p.metric))
    base.update(best=_brief(best, p), runner_up=_brief(runner_up, p))

    def result(promote: bool, reason: str, champ_v: float | None, same: bool | None) -> dict:
        diff = None if champ_v is None else (best_v - champ_v if p.higher_is_better else champ_v - best_v)
        after = best if promote else champ
        # the best candidate that is not the champion after the decision (same model and version = same entry)
        challenger = next((c for c in valid if after is None or _ident(c) != _ident(after)), None)
        return {**base, "promote": promote, "reason": reason, "champion_after": _brief(after, p),
                "challenger_after": _brief(challenger, p),
                "compared": {"metric": p.metric, "direction": direction, "best": best_v, "champion": champ_v,
                             "difference": diff, "min_improvement": p.min_improvement, "test_set": test_set,
                             "champion_test_set": None if champ is None else champ.get("test_set"),
                             "same_test_set": same}}

    if champ is None:
        return result(True, f"no current champion: {_name(best)} ({p.metric} {_fmt(best_v)}) is promoted", None, None)

    if _same_entry(best, champ):
        return result(False, f"the best candidate {_name(best)} ({p.metric} {_fmt(best_v)}) is already the champion",
                      best_v, True)

    remeasured = next((c for c in valid if _same_entry(c, champ)), None)
    champ_fp = champ.get("test_set")
    same = test_set is not None and champ_fp is not None and str(champ_fp) == test_set
    if remeasured is not None:
        ref, where = remeasured, "re-measured on the current test set"
        same = True
    elif same:
        ref, where = champ, "same test set"
    else:
        ref, where = None, None

    if ref is None or _num(ref.get(p.metric)) is None:
        why = (f"the champion {_name(champ)} was measured on a different test set (fingerprint {champ_fp} != "
               f"{test_set})" if champ_fp is not None and test_set is not None else
               f"the test-set fingerprint of the champion {_name(champ)} ({champ_fp}) or of the candidates "
               f"({test_set}) is unknown")
        if ref is not None:
            why = f"the champion {_name(champ)} has no {p.metric}"
        if p.on_test_set_change == "promote_best":
            return result(True, f"{why}, so its {p.metric} on the current test set is unknown: promoting the best "
                                f"candidate measured on it, {_name(best)} ({_fmt(best_v)})", None, same)
        return result(False, f"{why}, so its {p.metric} on the current test set is unknown: champion stays "
                             f"(on_test_set_change=keep_champion); best candidate {_name(best)} ({_fmt(best_v)})",
                      None, same)

    champ_v = _num(ref.get(p.metric))
    diff = best_v - champ_v if p.higher_is_better else champ_v - best_v
    margin_ok = diff >= p.min_improvement - p.tie_tolerance
    # with a zero margin the rule itself must prefer the best (an exact tie goes to the smaller model)
    champ_entry = {**champ, p.metric: champ_v, p.tie_breaker: ref.get(p.tie_breaker, champ.get(p.tie_breaker))}
    rule_ok = rank([best, champ_entry], p)[0] is best
    verb = "beats" if diff > p.tie_tolerance else ("ties" if abs(diff) <= p.tie_tolerance else "is below")
    desc = (f"{_name(best)} {p.metric} {_fmt(best_v)} {verb} champion {_name(champ)} {_fmt(champ_v)} ({where}) "
            f"by {_fmt(diff)}")
    if margin_ok and rule_ok:
        return result(True, f"{desc} >= margin {_fmt(p.min_improvement)}: promoted", champ_v, same)
    if margin_ok:
        return result(False, f"{desc}; tie goes to the champion by {p.tie_breaker}: champion stays", champ_v, same)
    return result(False, f"{desc}: does not beat it by the margin {_fmt(p.min_improvement)}: champion stays",
                  champ_v, same)
