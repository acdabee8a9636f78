"""DICOM decoding (pydicom) to the 8-bit greyscale picture the rest of the code uses.

:func:`lungxray.images.decode.open_grey` comes here when Pillow does not recognise a file and the file is DICOM (the
``DICM`` preamble, or a ``.dcm``/``.dicom`` name). The rules, in the order of the DICOM standard's grey pipeline:

* the pixel limit is checked from the header (Rows x Columns) before any pixel is decoded, as for every other image;
* one frame only: a multi-frame object (a cine loop, a tomosynthesis stack) is refused (reason ``multi_frame``): say
  which frame to use by exporting it as its own file;
* compressed transfer syntaxes are decoded by whatever pydicom decoder is installed (RLE natively; JPEG and JPEG 2000
  through Pillow, pylibjpeg or GDCM); a syntax no installed decoder handles is refused (reason
  ``unsupported_transfer_syntax``) with the packages that would decode it;
* modality LUT (rescale slope/intercept, or a modality LUT sequence), then VOI LUT or the first window
  (centre/width), both through :mod:`pydicom.pixels`; the VOI output range (the window's, or the LUT's bit depth)
  is mapped linearly onto 0..255;
* without a VOI: 8-bit unsigned values with no rescale are used as stored (an 8-bit PNG written as DICOM gives the
  same picture), anything wider is stretched min..max to 0..255, as a 16-bit PNG is (:mod:`lungxray.images.decode`);
* ``MONOCHROME1`` (white = low values) is inverted last, so bones are always white; colour (RGB/YBR) becomes grey as
  a colour PNG does.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

DICOM_EXTENSIONS = (".dcm", ".dicom")
_PREAMBLE = 128  # bytes before the "DICM" magic


def is_dicom(source: str | Path | bytes) -> bool:
    """Whether ``source`` (a path or the file's bytes) is DICOM: the ``DICM`` magic after the 128-byte preamble, or a
    ``.dcm``/``.dicom`` file name (files written without the preamble)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[_PREAMBLE:_PREAMBLE + 4]) == b"DICM"
    if Path(source).suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(source, "rb") as fh:
            fh.seek(_PREAMBLE)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _read(source: str | Path | bytes):
    import pydicom
    from pydicom.errors import InvalidDicomError

    from lungxray.images.pixels import ImageRejected

    fh = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        return pydicom.dcmread(fh, force=True)
    except OSError as e:
        raise ImageRejected("unreadable_file", f"cannot read: {e}") from None
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as e:
        raise ImageRejected("decode_error", f"cannot decode DICOM: {' '.join(str(e).split())[:300]}") from None


def _check_decodable(ds, max_pixels: int) -> None:
    """Refuse, from the header only, what cannot or must not be decoded."""
    from pydicom.pixels import get_decoder

    from lungxray.images.pixels import ImageRejected, too_many_pixels

    if "PixelData" not in ds:
        raise ImageRejected("not_an_image", "not an image: a DICOM object without pixel data (a report, a "
                                            "structured document?)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageRejected("multi_frame", f"multi-frame DICOM ({frames} frames): only single-frame X-rays can be "
                                           f"classified; export the frame to classify as its own file")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > max_pixels:
        raise too_many_pixels(cols, rows, max_pixels)
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is not None and uid.is_compressed:
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies) if decoder is not None else ""
            raise ImageRejected("unsupported_transfer_syntax",
                                f"DICOM compressed as {uid.name} ({uid}): no installed pydicom decoder handles it"
                                + (f" ({missing})" if missing else "") + "; decompress it (e.g. `gdcmconv --raw`) "
                                f"or install a decoder")


def _voi_to_uint8(arr: np.ndarray, ds) -> np.ndarray | None:
    """VOI LUT or window applied and its output range mapped onto 0..255; None when the file has no VOI."""
    from pydicom.pixels import apply_voi_lut

    if ds.get("VOILUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        lo, hi = (float(v) for v in apply_voi_lut(np.array([-1e300, 1e300]), ds))  # the window's output range
    else:
        return None
    out = np.asarray(apply_voi_lut(arr, ds), dtype=np.float64)
    if hi <= lo:
        return np.zeros(out.shape, dtype=np.uint8)
    return np.clip(np.rint((out - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _grey_pixels(ds) -> np.ndarray:
    """The frame's displayable grey values, uint8 (rules in the module docstring)."""
    from pydicom.pixels import apply_modality_lut

    from lungxray.images.pixels import stretch_to_uint8, to_grey8

    arr = ds.pixel_array
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:  # colour: pydicom gives RGB
        return np.asarray(to_grey8(Image.fromarray(np.asarray(arr, dtype=np.uint8), mode="RGB")))
    modality = apply_modality_lut(arr, ds)
    grey = _voi_to_uint8(modality, ds)
    if grey is None:
        as_stored = (modality.dtype.kind in "ui" and int(ds.get("BitsStored", 8) or 8) <= 8 and modality.size > 0
                     and modality.min() >= 0 and modality.max() <= 255)
        grey = np.asarray(modality, dtype=np.uint8) if as_stored else stretch_to_uint8(modality)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        grey = 255 - grey
    return np.ascontiguousarray(grey, dtype=np.uint8)


def open_dicom(source: str | Path | bytes, max_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    """Decode a DICOM file (a path or its bytes) to ``(8-bit greyscale image, (width, height))``, as
    :func:`lungxray.images.decode.open_grey` does for other formats. A file that cannot be used raises
    :class:`~lungxray.images.pixels.ImageRejected` (``multi_frame``, ``unsupported_transfer_syntax``,
    ``too_many_pixels``, ``decode_error``, ...)."""
    from lungxray.images.pixels import ImageRejected

    if not isinstance(source, (bytes, bytearray, memoryview)) and os.path.isfile(source) \
            and os.path.getsize(source) == 0:
        raise ImageRejected("empty_file", "empty file (0 bytes)")
    ds = _read(source)
    _check_decodable(ds, max_pixels)
    try:
        grey = _grey_pixels(ds)
    except ImageRejected:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a rejected file, never a crash
        raise ImageRejected("decode_error", f"cannot decode DICOM pixels: {type(e).__name__}: "
                                            f"{' '.join(str(e).split())[:300]}") from None
    if grey.ndim != 2:
        raise ImageRejected("decode_error", f"cannot decode DICOM pixels: expected one grey frame, got an array of "
                                            f"shape {grey.shape}")
    return Image.fromarray(grey, mode="L"), (grey.shape[1], grey.shape[0])


# --- writing (tests, benchmarks, converting a PNG for a PACS demo) ---------------------------------------------------


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                window: tuple[float, float] | None = None, rescale: tuple[float, float] | None = None,
                rle: bool = False, preamble: bool = True) -> Path:
    """Write ``pixels`` (H, W) or (frames, H, W), uint8 or uint16, as a secondary-capture DICOM file.

    ``window``: (centre, width); ``rescale``: (slope, intercept); ``rle``: RLE Lossless (pydicom's own encoder);
    ``preamble``: False writes the bare dataset (no 128-byte preamble, no ``DICM``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

    pixels = np.ascontiguousarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = "DX", "Test^Lungxray", "0"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.tobytes()
    if rle:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=preamble)
    return path
