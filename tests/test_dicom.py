"""DICOM files decode to the same 8-bit picture as the PNG of the same X-ray (lungxray.images.dicom via
imaging.open_grey)."""

from __future__ import annotations

import numpy as np
import pytest

from lungxray.images.decode import ImageRejected, open_checked, open_grey
from lungxray.images.dicom import write_dicom

from helpers.images import xray


@pytest.fixture(scope="module")
def grey():
    """A chest-X-ray-like picture using the whole 0..255 range."""
    img = xray(3, size=(64, 48))
    img[0, 0], img[0, 1] = 0, 255
    return img


def decoded(path) -> np.ndarray:
    return np.asarray(open_grey(path)[0])


@pytest.mark.parametrize("case", ["monochrome2_8bit", "monochrome1_8bit", "monochrome2_16bit_window",
                                  "monochrome1_12bit_rescaled_window", "rle_compressed", "no_preamble"])
def test_a_dicom_decodes_to_the_picture_it_was_written_from(tmp_path, grey, case):
    wide = grey.astype(np.uint16)
    kw = {"monochrome2_8bit": dict(pixels=grey),
          "monochrome1_8bit": dict(pixels=255 - grey, photometric="MONOCHROME1"),
          "monochrome2_16bit_window": dict(pixels=wide * 257, window=(32768, 65536)),
          # stored s = (255 - g) * 16 in 12 bits; rescaled: s * 0.5 - 1024; the window spans the rescaled range
          "monochrome1_12bit_rescaled_window": dict(pixels=(255 - wide) * 16, photometric="MONOCHROME1", bits_stored=12,
                                                    rescale=(0.5, -1024), window=(-0.25, 2048.5)),
          "rle_compressed": dict(pixels=grey, rle=True),
          "no_preamble": dict(pixels=grey, preamble=False)}[case]
    got = decoded(write_dicom(tmp_path / "x.dcm", **kw))
    assert got.shape == grey.shape
    assert np.abs(got.astype(int) - grey).max() <= 1


def test_a_16_bit_dicom_without_a_window_is_stretched_as_a_16_bit_png_is(tmp_path, grey):
    from PIL import Image

    wide = (grey.astype(np.uint16) * 40 + 1000)
    Image.fromarray(wide).save(tmp_path / "x.png")
    assert np.array_equal(decoded(write_dicom(tmp_path / "x.dcm", wide)), decoded(tmp_path / "x.png"))


def test_a_multi_frame_dicom_is_refused_with_a_clear_reason(tmp_path, grey):
    with pytest.raises(ImageRejected, match="multi-frame DICOM \\(2 frames\\)") as e:
        open_grey(write_dicom(tmp_path / "x.dcm", np.stack([grey, grey])))
    assert e.value.reason == "multi_frame"


def test_a_transfer_syntax_no_installed_decoder_handles_is_refused_with_what_would_decode_it(tmp_path, grey):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    path = write_dicom(tmp_path / "x.dcm", grey)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8not really jpeg-ls\xff\xd9"])
    ds.save_as(path)
    with pytest.raises(ImageRejected, match="JPEG-LS Lossless.*no installed pydicom decoder") as e:
        open_grey(path)
    assert e.value.reason == "unsupported_transfer_syntax"


def test_the_pixel_limit_is_checked_from_the_dicom_header(tmp_path, grey):
    with pytest.raises(ImageRejected, match="too many pixels: 64x48") as e:
        open_grey(write_dicom(tmp_path / "x.dcm", grey), max_pixels=1000)
    assert e.value.reason == "too_many_pixels"


def test_corrupt_dicom_bytes_are_a_rejected_file_not_a_traceback(tmp_path, grey):
    data = write_dicom(tmp_path / "x.dcm", grey).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:400])
    with pytest.raises(ImageRejected):
        open_grey(tmp_path / "cut.dcm")
    assert np.array_equal(np.asarray(open_grey(data)[0]), grey)  # the file's bytes decode as the file does


def test_fetch_probe_still_reads_no_dicom(tmp_path, grey):
    """fetch's guarded open is unchanged: DICOM stays a rejected file there (the pipeline's inputs do not change)."""
    with pytest.raises(ImageRejected) as e:
        with open_checked(write_dicom(tmp_path / "x.dcm", grey)):
            pass
    assert e.value.reason == "not_an_image"
