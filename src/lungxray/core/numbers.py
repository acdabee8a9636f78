"""Numbers read from reports and how they are written in them: one rule for a missing value everywhere.

* :func:`finite`: a JSON value as a float, or None when it is missing, not a number, not finite or a bool (``true``
  is not a metric: the gate and the promotion rule both read figures this way).
* :func:`fmt` / :func:`fmt_interval`: ``0.912`` and ``0.912 [0.881, 0.940]``; a missing value is ``-`` (it was
  ``n/a`` in one report, ``-`` in others).
"""

from __future__ import annotations

import math

MISSING = "-"


def finite(v) -> float | None:
    """``v`` as a finite float, or None (None, bools, non-numbers, NaN and infinities)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def fmt(v, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals, or :data:`MISSING`."""
    x = finite(v)
    return MISSING if x is None else f"{x:.{digits}f}"


def fmt_interval(v, lo, hi, digits: int = 3) -> str:
    """``v [lo, hi]``; ``v`` alone when a bound is missing; :data:`MISSING` when ``v`` is."""
    s = fmt(v, digits)
    if s == MISSING or finite(lo) is None or finite(hi) is None:
        return s
    return f"{s} [{fmt(lo, digits)}, {fmt(hi, digits)}]"
