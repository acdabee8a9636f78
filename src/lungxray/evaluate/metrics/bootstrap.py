"""Bootstrap confidence intervals over split units, and the paired difference of two models.

* Bootstrap: ``params.bootstrap`` resamples (seeded; percentile interval at ``ci``) of the **split units**, not of
  the images: a unit is the union of dedupe group and patient (``unit`` in ``split.csv`` and the processed index), and
  images of one unit are not independent (same patient, same X-ray). Each resample draws as many units as there are,
  with replacement, and takes every image of each drawn unit (cluster bootstrap), so proportions are over the
  resample's images. Without units (``units=None``), or with one image per unit, this is the plain image bootstrap.
  A resample in which a class is absent averages macro recall / AUC over the classes it holds (NaN-skipping); the
  interval bounds are ``None`` when ``bootstrap`` is 0 or the statistic is undefined.
* Paired difference (:func:`paired_difference`, used to decide a promotion): two models' predictions on the same
  images, resampled together (the same units in every resample); the interval is the percentile interval of the
  per-resample differences, which is much narrower than comparing two separate intervals.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from lungxray.evaluate.metrics.primitives import grouped_auc, json_float


def bootstrap_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, n, size=(resamples, n))
    flat = (idx + (np.arange(resamples) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def unit_codes(units: Sequence | None, n: int) -> tuple[np.ndarray, int]:
    """Unit index of every image, numbered in order of first appearance (one image per unit: 0..n-1)."""
    if units is None:
        return np.arange(n), n
    u = np.asarray(list(units), dtype=object).astype(str)
    if u.shape[0] != n:
        raise ValueError(f"{u.shape[0]} units for {n} samples")
    codes, uniques = pd.factorize(u)
    return codes.astype(np.int64), len(uniques)


BOOTSTRAP_STATISTICS = ("accuracy", "macro_recall", "macro_auc")


def _weighted_statistics(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro recall and macro AUC for each row of image multiplicities ``w`` (B, N); NaN where undefined."""
    b, c = w.shape[0], p.shape[1]
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    total = w.sum(axis=1)
    recalls = np.full((b, c), np.nan)
    aucs = np.full((b, c), np.nan)
    for k in range(c):
        pos = y == k
        if not pos.any():
            continue
        support = w @ pos.astype(np.float64)
        hits = w @ (correct * pos)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls[:, k] = np.where(support > 0, hits / np.where(support > 0, support, 1), np.nan)
        if not pos.all():
            aucs[:, k] = grouped_auc(p[:, k], pos, w)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet_nanmean():
        return {"accuracy": np.where(total > 0, (w @ correct) / np.where(total > 0, total, 1), np.nan),
                "macro_recall": np.nanmean(recalls, axis=1), "macro_auc": np.nanmean(aucs, axis=1)}


def resample_weights(units: Sequence | None, n: int, resamples: int, seed: int,
                     chunk: int | None = None) -> Iterator[np.ndarray]:
    """The image multiplicities of ``resamples`` unit resamples, in chunks of rows (B, n): every image weighs as often
    as its unit was drawn. The same ``seed`` gives the same resamples, whatever is computed from them (the intervals
    of :func:`bootstrap_ci` and the lift over the majority class of :mod:`.no_skill` share them)."""
    codes, n_units = unit_codes(units, n)
    rng = np.random.default_rng(seed)
    chunk = chunk or max(1, min(resamples, 4_000_000 // max(n, 1)))
    done = 0
    while done < resamples:
        b = min(chunk, resamples - done)
        yield bootstrap_counts(n_units, b, rng)[:, codes]
        done += b


def _resampled_statistics(y: np.ndarray, probs: Sequence[np.ndarray], units: Sequence | None, resamples: int,
                          seed: int, chunk: int | None = None) -> list[dict[str, np.ndarray]]:
    """The statistics of each model in ``probs`` over the same ``resamples`` unit resamples (vectorised, chunked)."""
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in probs]
    for w in resample_weights(units, y.shape[0], resamples, seed, chunk):
        for i, p in enumerate(probs):
            parts[i].append(_weighted_statistics(y, p, w))
    return [{k: np.concatenate([d[k] for d in per]) for k in BOOTSTRAP_STATISTICS} for per in parts]


def percentile_interval(v: np.ndarray, ci: float) -> dict[str, float | None]:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"low": None, "high": None}
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
    return {"low": json_float(lo), "high": json_float(hi)}


def bootstrap_ci(y_true: np.ndarray, probs: np.ndarray, resamples: int, ci: float = 0.95, seed: int = 0,
                 chunk: int | None = None, units: Sequence | None = None) -> dict[str, dict[str, float | None]]:
    """Percentile bootstrap intervals of accuracy, macro recall and macro AUC, resampling ``units`` (cluster bootstrap;
    ``None``: each image is its own unit).

    Each resample is a multiplicity vector over the samples; the statistics are weighted sums, so no resampled
    array is ever materialised. Chunks bound memory at about 32 MB of weights.
    """
    y, p = np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    if resamples <= 0 or y.shape[0] == 0:
        return {k: {"low": None, "high": None} for k in BOOTSTRAP_STATISTICS}
    stats = _resampled_statistics(y, [p], units, resamples, seed, chunk)[0]
    return {k: percentile_interval(stats[k], ci) for k in BOOTSTRAP_STATISTICS}


def paired_difference(y_true: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, statistic: str, resamples: int,
                      ci: float = 0.95, seed: int = 0, units: Sequence | None = None) -> dict[str, Any]:
    """``statistic`` of model a minus that of model b on the same images, with a paired percentile bootstrap interval.

    Both models are scored on the same resampled ``units`` in every resample. Returns ``a``, ``b`` and
    ``difference`` (on all images), ``low`` / ``high`` (None when no resample defines the statistic),
    ``resamples``, ``ci``, ``seed``, ``units`` and ``images``.
    """
    if statistic not in BOOTSTRAP_STATISTICS:
        raise ValueError(f"no paired bootstrap for {statistic!r}; use one of {list(BOOTSTRAP_STATISTICS)}")
    y = np.asarray(y_true, dtype=np.int64)
    pa, pb = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    if pa.shape != pb.shape or pa.shape[0] != y.shape[0]:
        raise ValueError(f"paired predictions differ in shape: {pa.shape} and {pb.shape} for {y.shape[0]} labels")
    ones = np.ones((1, y.shape[0]))
    a, b = (json_float(_weighted_statistics(y, p, ones)[statistic][0]) for p in (pa, pb))
    out = {"statistic": statistic, "a": a, "b": b, "difference": None if a is None or b is None else a - b,
           "low": None, "high": None, "resamples": int(resamples), "ci": ci, "seed": seed,
           "units": unit_codes(units, y.shape[0])[1], "images": int(y.shape[0])}
    if resamples > 0 and y.shape[0]:
        sa, sb = _resampled_statistics(y, [pa, pb], units, resamples, seed)
        out.update(percentile_interval(sa[statistic] - sb[statistic], ci))
    return out


class _quiet_nanmean:
    """Silence 'Mean of empty slice' (all-NaN rows are expected and give NaN)."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)
