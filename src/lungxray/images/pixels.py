"""Pixels and the rejection vocabulary every decoder shares (:mod:`lungxray.images.decode` for the common formats,
:mod:`lungxray.images.dicom` for DICOM): any image as 8-bit grey (:func:`to_grey8`), and :class:`ImageRejected`, the
reason and detail of a file that cannot be used; :func:`pixel_stats`, the normalisation of a model trained from
scratch."""

from __future__ import annotations

import numpy as np
from PIL import Image

_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;32", "F"}


def stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map the value range actually used by a wide (16/32-bit, float) image onto 0..255."""
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, 0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.clip(np.rint((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def to_grey8(im: Image.Image) -> Image.Image:
    """Return ``im`` as an 8-bit greyscale (mode ``L``) image, whatever its mode."""
    mode = im.mode
    if mode == "L":
        return im
    if mode in _WIDE_MODES or mode.startswith("I;"):
        return Image.fromarray(stretch_to_uint8(np.asarray(im)), mode="L")
    if mode == "1":
        return im.convert("L")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        if mode == "PA":
            im = im.convert("RGBA")
        alpha = np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0
        grey = np.asarray(im.convert("L"), dtype=np.float32)
        if alpha.min() >= 1.0:
            return Image.fromarray(grey.astype(np.uint8), mode="L")
        return Image.fromarray(np.clip(np.rint(grey * alpha), 0, 255).astype(np.uint8), mode="L")
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    return im.convert("L")


class ImageRejected(Exception):
    """A file that cannot be used as an image: ``reason`` (fetch's vocabulary, see the module docstring) and a
    readable ``detail`` (also the exception's message)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def too_many_pixels(width: int, height: int, max_pixels: int) -> ImageRejected:
    return ImageRejected("too_many_pixels", f"too many pixels: {width}x{height} = {width * height} pixels > max_pixels "
                                            f"{max_pixels} (decompression-bomb guard: raise fetch.max_pixels or "
                                            f"--max-pixels to accept it)")


def pixel_stats(total: int, total_sq: int, n: int) -> dict[str, float]:
    """``mean`` and ``std`` of ``n`` uint8 pixels scaled to 0..1, from their exact integer sum and sum of squares
    (the normalisation of a model trained from scratch: the preprocess stage's and each external fold's)."""
    mean = total / n / 255.0
    var = total_sq / n / 255.0**2 - mean * mean
    return {"mean": round(mean, 6), "std": round(float(np.sqrt(max(var, 1e-12))), 6)}
