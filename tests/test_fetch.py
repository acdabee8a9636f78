from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungxray.core import schema
from lungxray.core.config import FetchParams, parse_sections
from lungxray.core.errors import SourceError
from lungxray.data.fetch import run_fetch

from helpers.httpserver import FileServer, free_port
from helpers.images import save, xray
from helpers.kaggle import use_fake_kaggle, zip_bytes

# ---------------------------------------------------------------------------------------------------------------------
# helpers


def fetch_params(sources: list[dict], **kw):
    return parse_sections({"fetch": {"sources": sources, "workers": 1, **kw}}, {"fetch": FetchParams}).fetch


def manifest() -> pd.DataFrame:
    return pd.read_csv(schema.MANIFEST, dtype={"patient": str, "official_split": str}, keep_default_na=False)


def rejected() -> pd.DataFrame:
    return pd.read_csv(schema.REJECTED, keep_default_na=False)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(xray(seed)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# folder sources, modes and bad files


def test_class_folders_record_every_mode(project):
    root = project / "src_a"
    a = xray(1)
    save(root / "NORMAL" / "l.jpg", Image.fromarray(a), quality=90)
    save(root / "NORMAL" / "rgb.png", Image.fromarray(np.stack([a] * 3, -1)))
    save(root / "NORMAL" / "gray16.png", Image.fromarray(a.astype(np.uint16) * 257))
    save(root / "PNEUMONIA" / "palette.png", Image.fromarray(a).convert("P"))
    save(root / "PNEUMONIA" / "rgba.png", Image.fromarray(np.stack([a] * 3, -1)).convert("RGBA"))
    save(root / "PNEUMONIA" / "cmyk.jpg", Image.fromarray(np.stack([a] * 3, -1)).convert("CMYK"))
    exif = Image.Exif()
    exif[0x0112] = 6
    save(root / "PNEUMONIA" / "rotated.jpg", Image.fromarray(a), exif=exif)
    (root / "NORMAL" / "notes.txt").write_text("not an image, not an image extension")

    summary = run_fetch(fetch_params([{"name": "a", "kind": "folder", "path": "src_a",
                                       "labels": {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}}]), progress=False)
    m = manifest().set_index("id")
    assert list(manifest().columns) == schema.MANIFEST_COLUMNS
    assert summary["images"] == 7 and summary["rejected"] == 0
    assert m.loc["a/NORMAL/gray16.png", "bit_depth"] == 16
    assert m.loc["a/NORMAL/gray16.png", "mode"].startswith("I")
    assert m.loc["a/PNEUMONIA/palette.png", "mode"] == "P"
    assert m.loc["a/PNEUMONIA/rgba.png", "mode"] == "RGBA"
    assert m.loc["a/PNEUMONIA/cmyk.jpg", "mode"] == "CMYK"
    assert m.loc["a/PNEUMONIA/rotated.jpg", "orientation"] == 6
    assert m.loc["a/NORMAL/l.jpg", ["width", "height", "format"]].tolist() == [64, 48, "JPEG"]
    assert m.loc["a/NORMAL/l.jpg", "path"] == "data/raw/a/NORMAL/l.jpg"
    assert m.loc["a/NORMAL/l.jpg", "sha256"] == sha((root / "NORMAL" / "l.jpg").read_bytes())
    assert set(m.label) == {"normal", "pneumonia"}
    assert summary["sources"]["a"]["ignored_non_image_files"] == {".txt": 1}
    assert (project / "data/raw/a").is_symlink()


def test_bad_files_are_reported_not_fatal(project):
    root = project / "bad"
    good = save(root / "NORMAL" / "good.jpg", Image.fromarray(xray(2, (256, 256))), quality=95)
    (root / "NORMAL" / "empty.png").write_bytes(b"")
    (root / "NORMAL" / "text.png").write_text("<html>this is not a PNG</html>")
    (root / "NORMAL" / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    png = io.BytesIO()
    Image.fromarray(xray(3, (256, 256))).save(png, format="PNG")
    (root / "NORMAL" / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    save(root / "NORMAL" / "huge.png", Image.fromarray(xray(4, (300, 300))))

    summary = run_fetch(fetch_params([{"name": "b", "kind": "folder", "path": "bad", "labels": {"NORMAL": "normal"}}],
                                     max_pixels=80_000), progress=False)
    r = rejected().set_index("path")
    reasons = {Path(p).name: reason for p, reason in r.reason.items()}
    assert reasons == {
        "empty.png": "empty_file",
        "text.png": "not_an_image",
        "truncated.jpg": "truncated",
        "truncated.png": "truncated",
        "huge.png": "too_many_pixels",
    }
    assert manifest().id.tolist() == ["b/NORMAL/good.jpg"]
    assert summary["rejected"] == 5
    assert summary["sources"]["b"]["rejected"]["truncated"] == 2
    assert "90000 pixels" in r.loc["data/raw/b/NORMAL/huge.png", "detail"]


def test_unmapped_label_stops_with_label_source_and_example(project):
    save(project / "f" / "NORMAL" / "a.png", Image.fromarray(xray(1)))
    save(project / "f" / "Covid" / "b.png", Image.fromarray(xray(2)))
    with pytest.raises(SourceError) as e:
        run_fetch(fetch_params([{"name": "f", "kind": "folder", "path": "f", "labels": {"NORMAL": "normal"}}]),
                  progress=False)
    msg = str(e.value)
    assert "'Covid'" in msg and "source 'f'" in msg and "data/raw/f/Covid/b.png" in msg and "drop" in msg
    assert not schema.MANIFEST.exists()


def test_dropped_labels_are_counted(project):
    save(project / "f" / "NORMAL" / "a.png", Image.fromarray(xray(1)))
    save(project / "f" / "OTHER" / "b.png", Image.fromarray(xray(2)))
    save(project / "f" / "OTHER" / "c.png", Image.fromarray(xray(3)))
    s = run_fetch(fetch_params([{"name": "f", "kind": "folder", "path": "f",
                                 "labels": {"NORMAL": "normal", "OTHER": "drop"}}]), progress=False)
    assert s["dropped"] == 2 and s["sources"]["f"]["dropped"] == {"OTHER": 2}
    assert manifest().label.tolist() == ["normal"]


def test_image_outside_class_folder_is_a_clear_error(project):
    save(project / "f" / "loose.png", Image.fromarray(xray(1)))
    with pytest.raises(SourceError, match="not inside a class folder"):
        run_fetch(fetch_params([{"name": "f", "kind": "folder", "path": "f", "labels": {"x": "normal"}}]),
                  progress=False)


def test_missing_folder_names_the_path(project):
    with pytest.raises(SourceError, match="folder not found: nowhere"):
        run_fetch(fetch_params([{"name": "f", "kind": "folder", "path": "nowhere", "labels": {}}]), progress=False)


def test_csv_layout_patients_official_split_and_rerun_cache(project):
    root = project / "c"
    for i, name in enumerate(["P-001.jpg", "P-002.jpg", "person12_virus_3.jpeg", "orphan.png", "blank.png"]):
        save(root / "images" / "train" / name, Image.fromarray(xray(10 + i)))
    pd.DataFrame({"pid": ["P-001", "P-002", "", "blank"], "dx": ["COVID-19", "No finding", "Pneumonia", ""],
                  "who": ["77", "", "", ""]}).to_csv(root / "meta.csv", index=False)
    pd.DataFrame({"pid": ["ghost"], "dx": ["COVID-19"], "who": [""]}).to_csv(root / "more.csv", index=False)
    (root / "meta.csv").write_text((root / "meta.csv").read_text().replace(",Pneumonia,", ",Pneumonia,")
                                   .replace("\n,Pneumonia", "\nperson12_virus_3,Pneumonia"))
    src = {"name": "c", "kind": "folder", "path": "c", "layout": "csv", "root": "images",
           "official_split": "from_path",
           "csv": {"files": ["meta.csv", "more.csv"], "filename_column": "pid", "label_column": "dx",
                   "match_on": "stem", "patient_column": "who"},
           "patient": {"regex": r"^(person\d+)_", "namespace": "kermany"},
           "labels": {"COVID-19": "covid19", "No finding": "normal", "Pneumonia": "pneumonia",
                      "(blank)": "drop", "UNLISTED": "drop"}}
    s = run_fetch(fetch_params([src]), progress=False)
    m = manifest().set_index("id")
    assert m.label.to_dict() == {"c/images/train/P-001.jpg": "covid19", "c/images/train/P-002.jpg": "normal",
                                 "c/images/train/person12_virus_3.jpeg": "pneumonia"}
    assert m.patient.to_dict() == {"c/images/train/P-001.jpg": "c:77", "c/images/train/P-002.jpg": "",
                                   "c/images/train/person12_virus_3.jpeg": "kermany:person12"}
    assert set(m.official_split) == {"train"}
    assert s["sources"]["c"]["dropped"] == {"(blank)": 1, "UNLISTED": 1}
    assert s["sources"]["c"]["label_rows_without_image"] == 1
    assert s["probed_now"] == 3
    before = schema.MANIFEST.read_bytes()
    s2 = run_fetch(fetch_params([src]), progress=False)
    assert s2["probed_now"] == 0 and s2["probed_from_cache"] == 3
    assert schema.MANIFEST.read_bytes() == before


def test_conflicting_csv_labels_stop(project):
    save(project / "c" / "a.png", Image.fromarray(xray(1)))
    pd.DataFrame({"filename": ["a.png", "a.png"], "label": ["x", "y"]}).to_csv(project / "c" / "l.csv", index=False)
    with pytest.raises(SourceError, match="two different labels"):
        run_fetch(fetch_params([{"name": "c", "kind": "folder", "path": "c", "layout": "csv",
                                 "csv": {"files": ["l.csv"]}, "labels": {"x": "normal", "y": "normal"}}]),
                  progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# archives (local and over HTTP), zip-slip, checksums, interrupted downloads


def _archive_source(**kw):
    return {"name": "arc", "kind": "archive", "labels": {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}, **kw}


def test_local_zip_archive(project):
    data = zip_bytes({"set/NORMAL/a.png": png_bytes(1), "set/PNEUMONIA/b.png": png_bytes(2)})
    (project / "a.zip").write_bytes(data)
    run_fetch(fetch_params([_archive_source(path="a.zip", sha256=sha(data), root="set")]), progress=False)
    assert manifest().path.tolist() == ["data/raw/arc/set/NORMAL/a.png", "data/raw/arc/set/PNEUMONIA/b.png"]
    assert (project / "data/raw/arc/.lungxray-complete").exists()


def test_tar_gz_archive(project):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, payload in {"NORMAL/a.png": png_bytes(1), "PNEUMONIA/b.png": png_bytes(2)}.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    (project / "a.tar.gz").write_bytes(buf.getvalue())
    run_fetch(fetch_params([_archive_source(path="a.tar.gz", sha256=sha(buf.getvalue()))]), progress=False)
    assert len(manifest()) == 2


@pytest.mark.parametrize("member", ["../evil.png", "/etc/evil.png", "ok/../../evil.png"])
def test_zip_slip_is_refused(project, member):
    data = zip_bytes({"NORMAL/a.png": png_bytes(1), member: png_bytes(2)})
    (project / "a.zip").write_bytes(data)
    with pytest.raises(SourceError, match="zip-slip"):
        run_fetch(fetch_params([_archive_source(path="a.zip", sha256=sha(data))]), progress=False)
    assert not (project / "evil.png").exists() and not (project / "data" / "evil.png").exists()
    assert not (project / "data/raw/arc").exists()


def test_checksum_mismatch_shows_both_values(project):
    data = zip_bytes({"NORMAL/a.png": png_bytes(1)})
    (project / "a.zip").write_bytes(data)
    wrong = "0" * 64
    with pytest.raises(SourceError) as e:
        run_fetch(fetch_params([_archive_source(path="a.zip", sha256=wrong)]), progress=False)
    assert wrong in str(e.value) and sha(data) in str(e.value)


def test_http_archive_resumes_an_interrupted_download(project):
    data = zip_bytes({f"NORMAL/{i}.png": png_bytes(i) for i in range(6)})
    params = None
    with FileServer({"/x/set.zip": data}, cut_first_after=len(data) // 3) as srv:
        params = fetch_params([_archive_source(url=f"{srv.url}/x/set.zip", sha256=sha(data))])
        with pytest.raises(SourceError, match="resumes"):
            run_fetch(params, progress=False)
        part = project / "data/downloads/arc/set.zip.part"
        assert 0 < part.stat().st_size < len(data)
        assert not (project / "data/downloads/arc/set.zip").exists()
        assert not schema.MANIFEST.exists()
        run_fetch(params, progress=False)
        assert srv.requests[-1][2] == f"bytes={len(data) // 3}-"
    assert (project / "data/downloads/arc/set.zip").read_bytes() == data
    assert not part.exists()
    assert len(manifest()) == 6
    run_fetch(params, progress=False)  # complete and extracted: the server is gone, nothing is downloaded again


def test_http_checksum_mismatch_deletes_the_download(project):
    data = zip_bytes({"NORMAL/a.png": png_bytes(1)})
    with FileServer({"/set.zip": data}) as srv:
        with pytest.raises(SourceError, match="checksum mismatch"):
            run_fetch(fetch_params([_archive_source(url=f"{srv.url}/set.zip", sha256="a" * 64)]), progress=False)
    assert not list((project / "data/downloads/arc").glob("*"))


def test_no_network_names_the_source_and_the_offline_way(project):
    url = f"http://127.0.0.1:{free_port()}/set.zip"
    with pytest.raises(SourceError) as e:
        run_fetch(fetch_params([_archive_source(url=url, sha256="a" * 64)]), progress=False)
    msg = str(e.value)
    assert "source 'arc'" in msg and "could not reach" in msg and "kind: folder" in msg


# ---------------------------------------------------------------------------------------------------------------------
# kaggle through a local fake of the Kaggle API


def test_kaggle_dataset_download_and_cache(project, monkeypatch, tmp_path):
    data = zip_bytes({"chest_xray/test/NORMAL/IM-0001-0001.jpeg": png_bytes(1),
                      "chest_xray/train/PNEUMONIA/person7_virus_1.jpeg": png_bytes(2)})
    src = {"name": "k", "kind": "kaggle", "dataset": "someone/cxr", "official_split": "from_path",
           "labels": {"NORMAL": "normal", "PNEUMONIA": "pneumonia"},
           "patient": {"regex": r"^(?:(person\d+)_|((?:NORMAL2-)?IM-\d+)-)"}}
    with FileServer({}, kaggle={"someone/cxr": data}) as srv:
        use_fake_kaggle(monkeypatch, tmp_path, srv.url)
        run_fetch(fetch_params([src]), progress=False)
        posts = [r for r in srv.requests if r[0] == "POST"]
        assert any(p[1].endswith("/GetDataset") for p in posts)
        assert any(p[1].endswith("/DownloadDataset") and '"datasetVersionNumber": 3' in p[2] for p in posts)
    m = manifest().set_index("id")
    assert m.official_split.to_dict() == {"k/chest_xray/test/NORMAL/IM-0001-0001.jpeg": "test",
                                          "k/chest_xray/train/PNEUMONIA/person7_virus_1.jpeg": "train"}
    assert set(m.patient) == {"k:IM-0001", "k:person7"}
    assert (project / "data/raw/k").is_symlink()
    # pinned version + cache: works with the server gone (offline)
    run_fetch(fetch_params([{**src, "version": 3}]), progress=False)
    assert len(manifest()) == 2


def test_kaggle_refusal_mentions_credentials(project, monkeypatch, tmp_path):
    with FileServer({}, kaggle={}, kaggle_status=403) as srv:
        use_fake_kaggle(monkeypatch, tmp_path, srv.url)
        with pytest.raises(SourceError) as e:
            run_fetch(fetch_params([{"name": "k", "kind": "kaggle", "dataset": "someone/private", "labels": {}}]),
                      progress=False)
    assert "HTTP 403" in str(e.value) and "KAGGLE_KEY" in str(e.value)


def test_kaggle_unreachable(project, monkeypatch, tmp_path):
    use_fake_kaggle(monkeypatch, tmp_path, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SourceError) as e:
        run_fetch(fetch_params([{"name": "k", "kind": "kaggle", "dataset": "a/b", "labels": {}}]), progress=False)
    assert "could not reach Kaggle" in str(e.value) and "source 'k'" in str(e.value)


# ---------------------------------------------------------------------------------------------------------------------
# medmnist


def _npz(path: Path, splits=("train", "val", "test"), n=4):
    arrays = {}
    for k, s in enumerate(splits):
        arrays[f"{s}_images"] = np.stack([xray(k * 10 + i, (28, 28)) for i in range(n)])
        arrays[f"{s}_labels"] = (np.arange(n) % 2).astype(np.uint8).reshape(-1, 1)
    np.savez(path, **arrays)
    return path


def test_medmnist_keeps_official_splits(project):
    _npz(project / "pm.npz")
    s = run_fetch(fetch_params([{"name": "pm", "kind": "medmnist", "path": "pm.npz",
                                 "labels": {"0": "normal", "1": "pneumonia"}}]), progress=False)
    m = manifest()
    assert s["sources"]["pm"]["per_official_split"] == {"test": 4, "train": 4, "val": 4}
    assert m.groupby("official_split").label.value_counts().to_dict()[("train", "normal")] == 2
    assert set(m.width) == {28} and set(m["mode"]) == {"L"}
    first = m[m.id == "pm/train/0/train_000000.png"].path.item()
    assert np.array_equal(np.asarray(Image.open(first)), xray(0, (28, 28)))


def test_medmnist_over_http_with_checksum(project):
    _npz(project / "pm.npz", splits=("train", "val"))
    data = (project / "pm.npz").read_bytes()
    with FileServer({"/pm.npz": data}) as srv:
        run_fetch(fetch_params([{"name": "pm", "kind": "medmnist", "url": f"{srv.url}/pm.npz", "sha256": sha(data),
                                 "labels": {"0": "normal", "1": "pneumonia"}}]), progress=False)
    assert len(manifest()) == 8


def test_medmnist_wrong_keys(project):
    np.savez(project / "x.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(SourceError, match="MedMNIST keys"):
        run_fetch(fetch_params([{"name": "pm", "kind": "medmnist", "path": "x.npz", "labels": {}}]), progress=False)


def test_summary_json_is_written(project):
    save(project / "f" / "NORMAL" / "a.png", Image.fromarray(xray(1)))
    run_fetch(fetch_params([{"name": "f", "kind": "folder", "path": "f", "labels": {"NORMAL": "normal"}}]),
              progress=False)
    summary = json.loads(schema.FETCH_SUMMARY.read_text())
    assert summary["per_label"] == {"normal": 1}


# ---------------------------------------------------------------------------------------------------------------------
# messages, pixel limit and interrupted runs


def test_empty_source_names_the_configured_folder_and_what_it_expected(project):
    (project / "my_xrays" / "misc").mkdir(parents=True)
    (project / "my_xrays" / "misc" / "readme.txt").write_text("no images here")
    with pytest.raises(SourceError) as e:
        run_fetch(fetch_params([{"name": "f", "kind": "folder", "path": "my_xrays",
                                 "labels": {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}}]), progress=False)
    msg = str(e.value)
    assert "my_xrays" in msg and "data/raw" not in msg
    assert "sub-folder per raw label" in msg and "NORMAL, PNEUMONIA" in msg


def test_pixel_limit_rejects_without_decoding(project, bomb_png, monkeypatch):
    from PIL import ImageFile

    from lungxray.core.schema import DEFAULT_MAX_PIXELS
    from lungxray.data.fetch.probing import probe

    loaded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: loaded.append(im.size) or real_load(im))
    r = probe(str(bomb_png), DEFAULT_MAX_PIXELS)
    assert r["reason"] == "too_many_pixels" and loaded == []
    assert r["detail"].startswith(f"too many pixels: 13000x13000 = 169000000 pixels > max_pixels {DEFAULT_MAX_PIXELS}")


def _images(root: Path, n: int) -> list[Path]:
    return [save(root / "NORMAL" / f"{i}.png", Image.fromarray(xray(i))) for i in range(n)]


def _count_probes(monkeypatch) -> list[str]:
    from lungxray.data.fetch import probing

    calls, real = [], probing.probe
    monkeypatch.setattr(probing, "probe", lambda path, mp: calls.append(path) or real(path, mp))
    return calls


SOURCE_F = [{"name": "f", "kind": "folder", "path": "f", "labels": {"NORMAL": "normal"}}]


def test_kill_9_during_probing_then_rerun_probes_only_the_files_left(project, monkeypatch):
    import os
    import subprocess
    import sys

    from conftest import REPO

    _images(project / "f", 8)
    killer = f"""
import json, os, signal
from lungxray.data import fetch
from lungxray.core.config import FetchParams, parse_sections
from lungxray.data.fetch import probing
real, calls = probing.probe, []
def probe(path, max_pixels):
    calls.append(path)
    if len(calls) == 6:  # killed while probing the 6th file: 5 are done
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, max_pixels)
probing.probe = probe
fetch.run_fetch(parse_sections({{"fetch": {{"sources": {SOURCE_F!r}, "workers": 1}}}}, {{"fetch": FetchParams}}).fetch,
                progress=False)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    assert subprocess.run([sys.executable, "-c", killer], cwd=project, env=env).returncode == -9
    assert not schema.MANIFEST.exists()
    calls = _count_probes(monkeypatch)
    summary = run_fetch(fetch_params(SOURCE_F), progress=False)
    assert len(calls) == 3 and summary["probed_now"] == 3 and summary["probed_from_cache"] == 5
    assert len(manifest()) == 8


def test_a_damaged_probe_cache_is_rebuilt_not_trusted(project, monkeypatch):
    _images(project / "f", 4)
    run_fetch(fetch_params(SOURCE_F), progress=False)
    first = manifest()
    cache = schema.CACHE_DIR / "probe_cache"
    cache.write_bytes(b"not a cache" + cache.read_bytes()[:-7])  # overwritten or cut short: not trusted
    calls = _count_probes(monkeypatch)
    run_fetch(fetch_params(SOURCE_F), progress=False)
    assert len(calls) == 4
    pd.testing.assert_frame_equal(manifest(), first)
    calls.clear()
    run_fetch(fetch_params(SOURCE_F), progress=False)
    assert calls == []
