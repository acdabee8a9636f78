"""Synthetic copies of an X-ray: the alterations seen in merged Kaggle chest X-ray sets, which the dedupe stage must
see through (a re-published copy is the same image).

No stage uses them: they make the copies of ``benchmarks/dedupe_quality.py`` (precision/recall per alteration) and of
``tests/test_dedupe.py``, one home for both (benchmarks never import tests, tests never import benchmarks). Every function takes an 8-bit greyscale (mode ``L``)
or RGB PIL image and a ``numpy.random.Generator`` and returns ``(image, save_kwargs)``: the altered image and how to
save it (format, quality, ...).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance

Variant = tuple[Image.Image, dict]


def _grey(im: Image.Image) -> Image.Image:
    return im if im.mode == "L" else im.convert("L")


def resize(im: Image.Image, rng: np.random.Generator) -> Variant:
    s = float(rng.uniform(0.35, 1.4))
    w, h = im.size
    return im.resize((max(16, round(w * s)), max(16, round(h * s))), Image.Resampling.BICUBIC), {"format": "PNG"}


def aspect(im: Image.Image, rng: np.random.Generator) -> Variant:
    """Squash to a fixed size regardless of aspect ratio (400x300 like some Kaggle sets, or random)."""
    if rng.random() < 0.5:
        size = (400, 300)
    else:
        w, h = im.size
        sx, sy = rng.uniform(0.4, 1.1, size=2)
        size = (max(32, round(w * sx)), max(32, round(h * sy)))
    return im.resize(size, Image.Resampling.BILINEAR), {"format": "JPEG", "quality": int(rng.integers(75, 96))}


def squash(im: Image.Image, rng: np.random.Generator) -> Variant:
    """Aspect ratio (width/height) times 0.7 to 1.4 at 30-100% of the size, by one of the resamplers re-publishers
    use: nearest, antialiased bilinear (Pillow's resize) or pointwise bilinear without antialiasing (OpenCV's
    INTER_LINEAR), which keeps aliased detail and noise that an antialiased copy loses."""
    f = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    s = float(rng.uniform(0.3, 1.0))
    im = im if im.mode in ("L", "RGB") else _grey(im)
    w, h = im.size
    size = (max(32, round(w * s * f ** 0.5)), max(32, round(h * s / f ** 0.5)))
    how = str(rng.choice(["nearest", "bilinear", "pointwise"]))
    if how == "pointwise":
        out = im.transform(size, Image.Transform.AFFINE, (w / size[0], 0, 0, 0, h / size[1], 0),
                           resample=Image.Resampling.BILINEAR)
    else:
        out = im.resize(size, Image.Resampling.NEAREST if how == "nearest" else Image.Resampling.BILINEAR)
    return out, {"format": "JPEG", "quality": int(rng.integers(75, 96))}


def jpeg(im: Image.Image, rng: np.random.Generator) -> Variant:
    return im, {"format": "JPEG", "quality": int(rng.integers(25, 96))}


def crop(im: Image.Image, rng: np.random.Generator) -> Variant:
    """Remove 2-6% of the width/height, split at random between the two sides."""
    w, h = im.size
    fx, fy = rng.uniform(0.02, 0.06, size=2)
    ax, ay = rng.uniform(0, 1, size=2)
    left, top = round(w * fx * ax), round(h * fy * ay)
    right, bottom = w - round(w * fx * (1 - ax)), h - round(h * fy * (1 - ay))
    return im.crop((left, top, right, bottom)), {"format": "JPEG", "quality": 92}


def pad(im: Image.Image, rng: np.random.Generator) -> Variant:
    """Uniform border (black, white or grey), 2-15% per side, e.g. letter-boxing to a square."""
    w, h = im.size
    value = int(rng.choice([0, 0, 255, int(rng.integers(0, 256))]))
    if rng.random() < 0.5:  # letterbox to square
        side = max(w, h)
        l, t = (side - w) // 2, (side - h) // 2
        new = Image.new("L", (side, side), value)
        new.paste(_grey(im), (l, t))
    else:
        px = rng.uniform(0.02, 0.15, size=4)
        l, t, r, b = round(w * px[0]), round(h * px[1]), round(w * px[2]), round(h * px[3])
        new = Image.new("L", (w + l + r, h + t + b), value)
        new.paste(_grey(im), (l, t))
    return new, {"format": "PNG"}


def brightness(im: Image.Image, rng: np.random.Generator) -> Variant:
    f = float(rng.choice([rng.uniform(0.7, 0.9), rng.uniform(1.1, 1.3)]))
    return ImageEnhance.Brightness(im).enhance(f), {"format": "JPEG", "quality": 90}


def contrast(im: Image.Image, rng: np.random.Generator) -> Variant:
    f = float(rng.choice([rng.uniform(0.6, 0.9), rng.uniform(1.1, 1.4)]))
    return ImageEnhance.Contrast(im).enhance(f), {"format": "JPEG", "quality": 90}


def gamma(im: Image.Image, rng: np.random.Generator) -> Variant:
    g = float(rng.choice([rng.uniform(0.6, 0.85), rng.uniform(1.2, 1.6)]))
    lut = [round(255 * (i / 255) ** g) for i in range(256)]
    im = _grey(im)
    return im.point(lut), {"format": "JPEG", "quality": 90}


def png16(im: Image.Image, rng: np.random.Generator) -> Variant:
    """16-bit greyscale PNG, values scaled x257 (full range) or x16 (12-bit detector style)."""
    a = np.asarray(_grey(im), dtype=np.uint16)
    a = a * np.uint16(257) if rng.random() < 0.5 else a * np.uint16(16)
    return Image.fromarray(a.astype(np.uint16)), {"format": "PNG"}  # PIL picks mode I;16


def rotate(im: Image.Image, rng: np.random.Generator) -> Variant:
    angle = float(rng.uniform(1.0, 3.0) * rng.choice([-1, 1]))
    return _grey(im).rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0), {"format": "JPEG", "quality": 90}


KINDS: dict[str, Callable[[Image.Image, np.random.Generator], Variant]] = {
    "resize": resize,
    "aspect": aspect,
    "jpeg": jpeg,
    "crop": crop,
    "pad": pad,
    "brightness": brightness,
    "contrast": contrast,
    "gamma": gamma,
    "png16": png16,
    "rotate": rotate,
    "squash": squash,
}


def combo(im: Image.Image, rng: np.random.Generator) -> Variant:
    """Two or three alterations in a row (geometry first, then intensity, then encoding)."""
    order = ["crop", "rotate", "pad", "aspect", "squash", "resize", "brightness", "contrast", "gamma", "jpeg", "png16"]
    picked = set(rng.choice([k for k in order if k != "png16"], size=int(rng.integers(2, 4)), replace=False))
    kwargs: dict = {"format": "JPEG", "quality": 90}
    for k in order:
        if k in picked:
            im, kwargs = KINDS[k](im, rng)
    return im, kwargs


KINDS["combo"] = combo


def save_variant(im: Image.Image, kwargs: dict, path_stem: str) -> str:
    """Save with the given kwargs; returns the path written (extension from the format)."""
    kwargs = dict(kwargs)
    fmt = kwargs.pop("format")
    if fmt == "JPEG" and im.mode not in ("L", "RGB"):
        im = im.convert("RGB") if im.mode in ("RGBA", "P", "CMYK") else _grey(im)
    path = f"{path_stem}.{'jpg' if fmt == 'JPEG' else 'png'}"
    im.save(path, format=fmt, **kwargs)
    return path
