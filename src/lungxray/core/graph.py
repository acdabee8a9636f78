"""Connected components, shared by the dedupe (copies joined by verified pairs) and the split (images joined by
dedupe group or patient). Uses scipy's csgraph rather than a hand-written union-find."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def components(n: int, edges: Iterable[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """For each of ``n`` nodes, the smallest node index of its connected component under ``edges``."""
    e = np.asarray(list(edges) if not isinstance(edges, np.ndarray) else edges, dtype=np.int64).reshape(-1, 2)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(e), dtype=np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(n))
    return smallest[labels]


def components_by_keys(keys: Sequence[Sequence[str]]) -> np.ndarray:
    """Components of rows that share any non-empty key of the same kind (``keys``: one list per kind, one key per
    row, e.g. [groups, patients]); per row, the smallest row index of its component."""
    n = len(keys[0]) if keys else 0
    edges = []
    for col in keys:
        first: dict[str, int] = {}
        for i, k in enumerate(col):
            if k:
                j = first.setdefault(k, i)
                if j != i:
                    edges.append((j, i))
    return components(n, edges)
