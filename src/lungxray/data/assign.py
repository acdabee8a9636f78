"""Greedy, stratified assignment of split units (see :mod:`lungxray.data.split`) to train / val / test.

Units are assigned greedily, largest first (ties in size broken by a seeded random key), each to the split whose
per-label deficit (target count minus current count, weighted by the unit's label mix and scaled by the label's total)
is largest; ties between splits are broken by a seeded random order. The free units are sorted first, so the result
depends only on the *set* of units, the ratios and the generator's seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungxray.core.schema import SPLITS


def _targets(r: np.ndarray, totals: np.ndarray, forced: np.ndarray, forced_elsewhere: np.ndarray) -> np.ndarray:
    """Target count per split (rows) and label (columns).

    The ratio share of each label, except that a split already holding more than its share (forced there by an
    official split) keeps what it has and the others share the rest in proportion to their ratios. ``forced_elsewhere``
    counts images forced into splits that take no free units (ratio 0).
    """
    target = np.zeros_like(forced)
    for j in range(len(totals)):
        pool = totals[j] - forced_elsewhere[j]
        fixed = np.zeros(len(r), dtype=bool)
        while True:
            share = r * ~fixed
            rest = pool - forced[fixed, j].sum()
            t = np.where(fixed, forced[:, j], rest * share / share.sum() if share.sum() > 0 else 0.0)
            over = (~fixed) & (forced[:, j] > t + 1e-9)
            if not over.any():
                break
            fixed |= over
        target[:, j] = t
    return target


def assign_greedily(
    unit_counts: pd.DataFrame,
    free_units: list[str],
    current: pd.DataFrame,
    ratios: dict[str, float],
    rng: np.random.Generator,
) -> dict[str, str]:
    """Assign ``free_units`` (rows of ``unit_counts``: unit x label counts) to splits; ``current`` is split x label."""
    labels = list(unit_counts.columns)
    totals = unit_counts.sum(axis=0).to_numpy(dtype=float)
    scale = np.where(totals > 0, totals, 1.0)
    splits = [s for s in SPLITS if ratios[s] > 0]
    cur = current.reindex(index=splits, columns=labels, fill_value=0).to_numpy(dtype=float, copy=True)
    forced_all = current.reindex(columns=labels, fill_value=0).sum(axis=0).to_numpy(dtype=float)
    target = _targets(np.array([ratios[s] for s in splits]), totals, cur, forced_all - cur.sum(axis=0))

    free_units = sorted(free_units)
    sizes = unit_counts.loc[free_units].sum(axis=1).to_numpy() if free_units else np.array([])
    keys = rng.random(len(free_units))
    order = sorted(range(len(free_units)), key=lambda i: (-int(sizes[i]), float(keys[i]), free_units[i]))
    counts = unit_counts.loc[free_units].to_numpy(dtype=float) if free_units else np.zeros((0, len(labels)))

    out: dict[str, str] = {}
    for i in order:
        c = counts[i]
        score = ((target - cur) / scale) @ c  # weighted relative deficit per split
        tie = rng.permutation(len(splits))
        best = max(range(len(splits)), key=lambda k: (round(float(score[k]), 9), -int(tie[k])))
        cur[best] += c
        out[free_units[i]] = splits[best]
    return out
