"""Image decoding helpers shared by the dedupe (and usable by other stages).

Everything here turns "some image file as published" into a well-defined 8-bit greyscale picture:

* any PIL mode: ``1``, ``L``, ``P`` (with or without transparency), ``LA``, ``RGB``, ``RGBA``, ``CMYK``, ``YCbCr``,
  16-bit ``I;16``/``I;16B``/``I;16L``, 32-bit ``I`` and float ``F`` (wide modes are stretched min..max to 0..255:
  reading a 16-bit PNG as if it were 8-bit, as a plain ``convert('L')`` does, clips it to a white or black sheet);
* EXIF orientation is applied, so a photo-rotated copy looks like its original;
* alpha is composited over black (the background of a radiograph);
* JPEGs can be decoded at a reduced scale (``draft``), which is several times faster than a full decode and is all a
  64x64 thumbnail needs.

Every decode in the project goes through :func:`open_checked` (fetch's probe, the dedupe signatures and its CLI,
preprocess): one pixel limit, checked from the header before any pixel is decoded (a 191 kB PNG can hold
13000x13000 pixels), and one vocabulary of reasons for a file that cannot be used, the ``reason`` column of fetch's
``rejected.csv``: ``unreadable_file``, ``empty_file``, ``not_an_image``, ``too_many_pixels``, ``truncated``,
``decode_error``, each with a readable ``detail``. DICOM files (decoded by :mod:`lungxray.images.dicom` when Pillow does
not know them) add ``multi_frame`` and ``unsupported_transfer_syntax``; fetch's probe (:func:`open_checked`) reads no
DICOM. """

from __future__ import annotations

import io
import os
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lungxray.core.schema import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from lungxray.images.pixels import ImageRejected, stretch_to_uint8, to_grey8, too_many_pixels

# Pillow's own guard (a warning above 89 Mpx, an error above 179 Mpx, both after the file is opened) is replaced by
# max_pixels, checked in open_checked before decoding; leaving it on would reject some files with another message.
Image.MAX_IMAGE_PIXELS = None


# ----------------------------------------------------------------------------------------------------------------------
# the one guarded open


def _decode_failure(e: Exception) -> ImageRejected:
    if isinstance(e, UnidentifiedImageError):
        return ImageRejected("not_an_image", "not an image: no image decoder recognises this file")
    msg = str(e)[:300]
    if isinstance(e, EOFError) or "truncated" in msg.lower():
        return ImageRejected("truncated", f"truncated: {msg or type(e).__name__}")
    if isinstance(e, (OSError, SyntaxError, ValueError, struct.error)):
        return ImageRejected("decode_error", f"cannot decode: {msg}")
    return ImageRejected("decode_error", f"cannot decode: {type(e).__name__}: {msg}")


@contextmanager
def open_checked(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Image.Image]:
    """Open ``source`` (a path or the file's bytes) as a PIL image whose size is known not to exceed ``max_pixels``.

    Nothing is decoded before that check. Every failure, while opening or inside the ``with`` block (decode there:
    ``draft``, ``load``, conversions), raises :class:`ImageRejected`.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        fh = io.BytesIO(source)
    else:
        try:
            fh = open(source, "rb")
        except OSError as e:
            raise ImageRejected("unreadable_file", f"cannot read: {e}") from None
    with fh:
        if fh.seek(0, os.SEEK_END) == 0:
            raise ImageRejected("empty_file", "empty file (0 bytes)")
        fh.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow's warnings about odd but decodable files
                with Image.open(fh) as im:
                    w, h = im.size
                    if w * h > max_pixels:
                        raise too_many_pixels(w, h, max_pixels)
                    yield im
        except ImageRejected:
            raise
        except Exception as e:  # noqa: BLE001 - any decoder failure is a rejected file, never a crash
            raise _decode_failure(e) from None


# ----------------------------------------------------------------------------------------------------------------------
# decoding


def open_grey(source: str | Path | bytes, draft_size: int | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``source`` (a path or the file's bytes) to 8-bit greyscale with EXIF orientation applied.

    ``draft_size``: for JPEGs, let the decoder scale down by 1/2, 1/4 or 1/8 as long as both sides stay >= this size
    (much faster; the result is smaller than the stored image). Returns ``(grey image, (width, height))`` where the
    size is the stored image's full size (before draft, after EXIF rotation). A file that cannot be used (over
    ``max_pixels``, empty, not an image, truncated, ...) raises :class:`ImageRejected`. A DICOM file (which Pillow does
    not read) is decoded by :func:`lungxray.images.dicom.open_dicom`.
    """
    try:
        return _open_grey_pil(source, draft_size, max_pixels)
    except ImageRejected as e:
        from lungxray.images.dicom import is_dicom, open_dicom

        if e.reason == "not_an_image" and is_dicom(source):
            return open_dicom(source, max_pixels)
        raise


def _open_grey_pil(source: str | Path | bytes, draft_size: int | None,
                   max_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    with open_checked(source, max_pixels) as im:
        full = im.size
        orientation = 1
        try:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block must not make the image unreadable
            orientation = 1
        if draft_size and im.format == "JPEG":
            # draft keeps both sides >= the requested size; ask for the short side of the result
            w, h = im.size
            scale = max(draft_size / max(1, min(w, h)), 0.0)
            im.draft("L", (max(1, int(np.ceil(w * scale))), max(1, int(np.ceil(h * scale)))))
        im.load()
        if orientation in (5, 6, 7, 8):
            full = (full[1], full[0])
        if orientation != 1:
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # noqa: BLE001
                pass
        grey = to_grey8(im)
        if grey is im:
            grey = im.copy()
    return grey, full


def is_image_path(path: str | Path) -> bool:
    """Whether fetch (with its default ``image_extensions``) would read this file."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
