from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungxray.data.preprocess import PreprocessParams, content_box, load_split, load_square, run_preprocess, to_square

from helpers.images import save, xray


def test_pad_keeps_aspect_and_centres():
    img = Image.fromarray(np.full((50, 100), 200, np.uint8))
    out = to_square(img, 32, "pad", "area")
    assert out.shape == (32, 32)
    assert out[0].max() == 0 and out[-1].max() == 0  # padded rows top and bottom
    assert out[16].min() == 200


def test_stretch_fills():
    img = Image.fromarray(np.full((50, 100), 200, np.uint8))
    assert to_square(img, 32, "stretch", "bilinear").min() == 200


def framed(content: np.ndarray, pad: tuple[int, int, int, int], frame: int = 0) -> np.ndarray:
    """``content`` inside black padding (top, bottom, left, right), then a white frame ``frame`` pixels wide."""
    a = np.pad(content, ((pad[0], pad[1]), (pad[2], pad[3])), constant_values=0)
    return np.pad(a, frame, constant_values=255) if frame else a


def test_crop_removes_black_padding_and_a_white_frame_and_keeps_the_content():
    rng = np.random.default_rng(0)
    content = rng.integers(40, 200, (60, 40)).astype(np.uint8)
    a = framed(content, (5, 15, 30, 10), frame=3)
    top, bottom, left, right = content_box(a)
    assert np.array_equal(a[top:bottom, left:right], content)
    out = to_square(Image.fromarray(a), 30, "crop", "area")
    assert out.shape == (30, 30)
    assert out[:, 5:25].min() > 16  # the content fills the height: no border row left
    assert out[:, :3].max() == 0 and out[:, -3:].max() == 0  # padded to square (the short side) afterwards


def test_crop_keeps_dark_and_bright_content_inside_the_image():
    content = np.full((40, 40), 120, np.uint8)
    content[:, :10] = 0  # a black band and a white band inside the X-ray are content, not border...
    content[5:35, 30:] = 255
    content[0, :] = 120  # ...as the content's first row and column are not uniform
    content[:, 0] = 120
    a = framed(content, (4, 4, 0, 0))
    top, bottom, left, right = content_box(a)
    assert (top, bottom, left, right) == (4, 44, 0, 40)


def test_crop_of_a_blank_image_keeps_the_whole_image():
    for value in (0, 255):
        a = np.full((30, 50), value, np.uint8)
        assert content_box(a) == (0, 30, 0, 50)
        out = to_square(Image.fromarray(a), 20, "crop", "area")
        assert out.shape == (20, 20)
        assert np.array_equal(out, to_square(Image.fromarray(a), 20, "pad", "area"))


def test_crop_is_a_valid_preprocess_aspect():
    assert PreprocessParams(aspect="crop").aspect == "crop"


@pytest.mark.parametrize("kind", ["L", "I;16", "P", "RGBA", "CMYK", "exif6"])
def test_any_mode_becomes_8bit_grey(tmp_path, kind):
    a = xray(3, (40, 30))
    if kind == "I;16":
        img, path = Image.fromarray(a.astype(np.uint16) * 257), tmp_path / "x.png"
    elif kind == "P":
        img, path = Image.fromarray(a).convert("P"), tmp_path / "x.png"
    elif kind == "RGBA":
        img, path = Image.fromarray(np.stack([a] * 3, -1)).convert("RGBA"), tmp_path / "x.png"
    elif kind == "CMYK":
        img, path = Image.fromarray(np.stack([a] * 3, -1)).convert("CMYK"), tmp_path / "x.jpg"
    else:
        img, path = Image.fromarray(a), tmp_path / "x.png"
    kw = {}
    if kind == "exif6":
        exif = Image.Exif()
        exif[0x0112] = 6
        path, kw = tmp_path / "x.jpg", {"exif": exif, "quality": 95}
    save(path, img, **kw)
    out = load_square(str(path), 40, "stretch", "bilinear")
    assert out.dtype == np.uint8 and out.shape == (40, 40)
    ref = np.asarray(Image.fromarray(a).resize((40, 40), Image.Resampling.BILINEAR), dtype=np.float64)
    if kind == "exif6":  # stored upright, tagged as rotated: decoded turned by 90 degrees
        ref = np.asarray(Image.fromarray(a).transpose(Image.Transpose.ROTATE_270).resize((40, 40)), dtype=np.float64)
    corr = np.corrcoef(out.ravel().astype(np.float64), ref.ravel())[0, 1]
    assert corr > 0.95, corr


def test_run_preprocess_writes_arrays_index_and_stats(tmp_path):
    rows = []
    for i, (split, label) in enumerate([("train", "normal"), ("train", "pneumonia"), ("train", "normal"),
                                        ("val", "pneumonia"), ("test", "normal")]):
        p = save(tmp_path / "img" / f"{i}.png", Image.fromarray(xray(i, (60, 40))))
        rows.append({"id": f"s/{i}", "path": str(p), "label": label, "split": split, "source": "s"})
    df = pd.DataFrame(rows).sample(frac=1, random_state=0)
    out = tmp_path / "processed"
    stats = run_preprocess(df, ["normal", "pneumonia", "covid19"], PreprocessParams(image_size=32, workers=1), out,
                           progress=False)
    x, y = load_split(out, "train")
    assert x.shape == (3, 32, 32) and x.dtype == np.uint8 and y.tolist() == [0, 1, 0]
    assert stats["splits"]["val"]["per_class"] == {"normal": 0, "pneumonia": 1, "covid19": 0}
    train = np.load(out / "train.npy").astype(np.float64) / 255.0
    assert stats["mean"] == pytest.approx(train.mean(), abs=1e-6)
    assert stats["std"] == pytest.approx(train.std(), abs=1e-6)
    assert json.loads((out / "stats.json").read_text())["image_size"] == 32
    assert not (tmp_path / "processed.partial").exists()
    # same inputs -> identical arrays
    run_preprocess(df, ["normal", "pneumonia", "covid19"], PreprocessParams(image_size=32, workers=1),
                   tmp_path / "again", progress=False)
    assert (out / "train.npy").read_bytes() == (tmp_path / "again" / "train.npy").read_bytes()


def test_the_whole_official_test_set_is_written_beside_the_splits(tmp_path):
    rows = []
    for i, split in enumerate(["train", "val", "test", "test_official", "test_official"]):
        p = save(tmp_path / "img" / f"{i}.png", Image.fromarray(xray(i, (60, 40))))
        rows.append({"id": f"s/{i}", "path": str(p), "label": "normal", "split": split, "source": "s"})
    out = tmp_path / "processed"
    stats = run_preprocess(pd.DataFrame(rows), ["normal"], PreprocessParams(image_size=32, workers=1), out,
                           progress=False)
    x, y = load_split(out, "test_official")
    assert x.shape == (2, 32, 32) and stats["splits"]["test_official"]["images"] == 2
    assert stats["splits"]["test"]["images"] == 1


def test_a_file_that_vanished_is_a_clear_error(tmp_path):
    df = pd.DataFrame([{"id": "a", "path": str(tmp_path / "gone.png"), "label": "normal", "split": "train"}])
    from lungxray.core.errors import LungxrayError

    with pytest.raises(LungxrayError, match="gone.png"):
        run_preprocess(df, ["normal"], PreprocessParams(image_size=32, workers=1), tmp_path / "p", progress=False)
    assert not (tmp_path / "p").exists() and not (tmp_path / "p.partial").exists()


def test_the_processed_index_carries_the_split_unit(tmp_path):
    rows = []
    for i, (split, unit) in enumerate([("train", "s/0"), ("train", "s/0"), ("val", "s/2"), ("val", "s/2"),
                                       ("test", "s/4")]):
        p = save(tmp_path / "img" / f"{i}.png", Image.fromarray(xray(i, (40, 40))))
        rows.append({"id": f"s/{i}", "path": str(p), "label": "normal", "split": split, "source": "s", "unit": unit})
    out = tmp_path / "processed"
    run_preprocess(pd.DataFrame(rows), ["normal"], PreprocessParams(image_size=16, workers=1), out, progress=False)
    index = pd.read_csv(out / "index.csv", keep_default_na=False)
    assert index.set_index("id").unit.to_dict() == {r["id"]: r["unit"] for r in rows}
    # without units (a hand-made split), each image is its own unit
    no_unit = pd.DataFrame(rows).drop(columns="unit")
    run_preprocess(no_unit, ["normal"], PreprocessParams(image_size=16, workers=1), tmp_path / "p2", progress=False)
    assert (pd.read_csv(tmp_path / "p2" / "index.csv").pipe(lambda d: d.unit == d.id)).all()


def test_an_image_over_the_pixel_limit_is_not_decoded(tmp_path, bomb_png, monkeypatch):
    from PIL import ImageFile

    from lungxray.core.errors import LungxrayError
    from lungxray.images.decode import ImageRejected

    loaded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: loaded.append(im.size) or real_load(im))
    with pytest.raises(ImageRejected, match="too many pixels: 13000x13000"):
        load_square(str(bomb_png), 32)
    assert loaded == []
    small = save(tmp_path / "small.png", Image.fromarray(xray(1, (60, 40))))
    df = pd.DataFrame([{"id": "a", "path": str(small), "label": "normal", "split": "train"}])
    with pytest.raises(LungxrayError, match="too many pixels: 60x40 = 2400 pixels > max_pixels 2000"):
        run_preprocess(df, ["normal"], PreprocessParams(image_size=32, workers=1), tmp_path / "p", progress=False,
                       max_pixels=2000)


def test_stats_record_every_setting_a_new_image_must_be_preprocessed_with(tmp_path):
    from lungxray.data.preprocess import preprocess_record

    rows = [{"id": f"s/{i}", "path": str(save(tmp_path / "img" / f"{i}.png", Image.fromarray(xray(i, (60, 40))))),
             "label": "normal", "split": split, "source": "s"} for i, split in enumerate(["train", "val", "test"])]
    params = PreprocessParams(image_size=24, aspect="stretch", resample="bilinear", workers=1)
    stats = run_preprocess(pd.DataFrame(rows), ["normal"], params, tmp_path / "p", progress=False)
    assert preprocess_record(stats) == {"image_size": 24, "aspect": "stretch", "resample": "bilinear"}


# ------------------------------------------------------------------------------------------------------ a full disk


def split_of(tmp_path, n: int) -> pd.DataFrame:
    return pd.DataFrame([{"id": f"s/{i}", "path": str(save(tmp_path / "img" / f"{i}.png",
                                                           Image.fromarray(xray(i, (60, 40))))),
                          "label": "normal", "split": ["train", "val", "test"][i % 3], "source": "s"}
                         for i in range(n)])


def test_a_full_disk_while_writing_the_tables_is_a_clear_error_and_keeps_the_previous_output(tmp_path,
                                                                                              monkeypatch):
    import errno

    import lungxray.core.io
    from lungxray.core.errors import DiskFullError

    df, out = split_of(tmp_path, 6), tmp_path / "processed"
    run_preprocess(df, ["normal"], PreprocessParams(image_size=16, workers=1), out, progress=False)
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    def full(self, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    monkeypatch.setattr(lungxray.core.io, "free_bytes", lambda folder: 3_000)
    with pytest.raises(DiskFullError) as e:
        run_preprocess(df, ["normal"], PreprocessParams(image_size=16, workers=1), out, progress=False)
    msg = str(e.value)
    assert f"no space left on the device to write {out}: " in msg and "\n" not in msg
    assert f"kB free in {out} once the partial output is removed" in msg
    assert not (tmp_path / "processed.partial").exists()
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_arrays_larger_than_the_free_space_stop_before_any_image_is_decoded(tmp_path):
    """The workers write the arrays through memory maps: on a full disk a write into a map kills the worker (SIGBUS)
    and the stage would wait for it forever. The space of every array is reserved when the file is made."""
    from lungxray.core.errors import DiskFullError

    from helpers.fullfs import small_tmpfs

    df = split_of(tmp_path, 30)  # 30 x 224 x 224 bytes = 1.5 MB
    with small_tmpfs(tmp_path / "full", "1m") as full:
        with pytest.raises(DiskFullError) as e:
            run_preprocess(df, ["normal"], PreprocessParams(image_size=224, workers=1), full / "processed",
                           progress=False)
        assert f"no space left on the device to write {full / 'processed'}: " in str(e.value)
        assert f"free in {full / 'processed'}" in str(e.value) and "free space" in str(e.value)
        assert list(full.iterdir()) == []
