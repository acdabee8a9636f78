"""Synthetic chest-X-ray-like images and saving them where a source folder expects them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def xray(seed: int = 0, size=(64, 48)) -> np.ndarray:
    """A smooth, chest-X-ray-like grey image (uint8)."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w]
    img = 120 + 60 * np.sin(x / (5 + seed % 7)) * np.cos(y / (7 + seed % 5)) + rng.normal(0, 8, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path
