"""How the benchmark tables print a figure measured over several seeds: ``mean ± sd`` (sample sd), the value alone
for one seed, empty for none. Seeds that produced no figure (``None`` or NaN, e.g. an AUC with one class, or a
column an older run did not record) are left out."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np


def mean_sd(values: Iterable[float | None], digits: int = 4) -> str:
    v = [float(x) for x in values if x is not None and not math.isnan(x)]
    if not v:
        return ""
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.mean(v):.{digits}f} ± {np.std(v, ddof=1):.{digits}f}"
