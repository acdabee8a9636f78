"""Headless figures: every PNG of the pipeline is drawn with matplotlib's Agg backend (no display, same pixels on a
laptop and in CI) and written atomically.

matplotlib is imported on first use (it takes a second), so importing a stage module stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lungxray.core.io import atomic_path

if TYPE_CHECKING:
    import pandas as pd


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike, **savefig: Any) -> Path:
    """Write ``fig`` to ``path`` as PNG (complete or not at all), then free it; ``savefig`` as for
    :meth:`matplotlib.figure.Figure.savefig` (``dpi``, ``bbox_inches``, ``metadata``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **savefig)
    pyplot().close(fig)
    return path


def curve_png(history: pd.DataFrame, title: str, path: Path) -> None:
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 3.8))
    for key, ax in (("loss", axes[0]), ("accuracy", axes[1])):
        ax.plot(history.epoch, history[f"train_{key}"], "o-", label="train")
        ax.plot(history.epoch, history[f"val_{key}"], "s-", label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path, dpi=110)
