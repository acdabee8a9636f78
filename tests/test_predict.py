"""Using the champion: `lungxray predict` on files and folders (PNG, JPEG, DICOM), the registered MLflow model that
takes images (in process, from another directory, served over HTTP)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungxray.cli.commands import main as cli
from lungxray.data.preprocess import load_square
from lungxray.images.dicom import write_dicom
from lungxray.serve.predict import find_files, load_predictor, predict_files
from lungxray.serve.predictor import PredictedBatch

from conftest import REPO
from helpers.httpserver import free_port
from helpers.images import xray
from helpers.processed import CLASSES

NAME = "predict-cxr"


@pytest.fixture(scope="module")
def champion(trained_cnn5, tmp_path_factory):
    """A copy of the session's tiny cnn5 (32 px; its data preprocessed with aspect=stretch, resample=bilinear),
    registered as NAME@champion in the SQLite store of the copy."""
    import mlflow

    run = trained_cnn5.copy(tmp_path_factory.mktemp("champion"))
    uri = run.params.mlflow.tracking_uri
    mlflow.set_tracking_uri(uri)  # where a models:/ source is looked up
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    mv = client.create_model_version(NAME, run.model_uri, run_id=run.train["mlflow_run_id"])
    client.set_registered_model_alias(NAME, "champion", mv.version)
    return {"root": run.root, "models": run.models, "uri": uri, "model_uri": run.model_uri}


@pytest.fixture
def real_xray(shared_data, tmp_path) -> np.ndarray:
    """A real chest X-ray of ../shared/data, 8-bit grey, at most 256 px (DICOM files of it stay small)."""
    from lungxray.images.decode import open_grey

    grey, _ = open_grey(sorted((shared_data / "jtiptj_test/NORMAL").iterdir())[0])
    grey.thumbnail((256, 256))
    return np.asarray(grey)


def reference_proba(models: Path, path) -> np.ndarray:
    """The evaluate stage's computation for one image: the preprocessed square, then the trained model's
    probabilities with its stored temperature (the served probabilities are calibrated)."""
    from lungxray.models.trained import load_trained_model

    square = load_square(str(path), 32, "stretch", "bilinear")
    return load_trained_model(models / "model.pt").proba(square[None])[0]


def probs(table: pd.DataFrame) -> np.ndarray:
    return table[[f"prob_{c}" for c in CLASSES]].to_numpy(dtype=float)


# ----------------------------------------------------------------------------------------------------------------------
# lungxray predict


def test_the_model_applies_the_preprocessing_its_data_was_made_with(champion):
    p = load_predictor(champion["models"], device="cpu")
    assert (p.architecture, p.classes, p.image_size, p.aspect, p.resample) == ("cnn5", CLASSES, 32, "stretch", "bilinear")


@pytest.mark.shared
def test_dicom_xrays_get_the_predictions_of_their_png(champion, real_xray, tmp_path):
    png = tmp_path / "x.png"
    Image.fromarray(real_xray).save(png)
    wide = real_xray.astype(np.uint16)
    files = [png,
             write_dicom(tmp_path / "m2_8.dcm", real_xray),
             write_dicom(tmp_path / "m1_8.dcm", 255 - real_xray, photometric="MONOCHROME1"),
             write_dicom(tmp_path / "m2_16.dcm", wide * 257, window=(32768, 65536)),
             write_dicom(tmp_path / "m1_16.dcm", (255 - wide) * 257, photometric="MONOCHROME1", window=(32768, 65536)),
             write_dicom(tmp_path / "rle.dcm", real_xray, rle=True),
             write_dicom(tmp_path / "multi.dcm", np.stack([real_xray, real_xray]))]
    table = predict_files(files, load_predictor(champion["models"], device="cpu"))
    assert list(table.file) == [str(f) for f in files]
    assert (table.error.iloc[:-1] == "").all() and "multi-frame DICOM" in table.error.iloc[-1]
    p = probs(table)
    np.testing.assert_allclose(p[1:-1], np.repeat(p[:1], 5, axis=0), atol=1e-6)
    np.testing.assert_allclose(p[0], reference_proba(champion["models"], png), atol=1e-9)
    assert np.isnan(p[-1]).all() and table.predicted.iloc[-1] == ""


@pytest.mark.shared
def test_a_folder_with_a_corrupt_file_and_a_non_image_gives_a_row_for_every_file_and_a_failing_exit(
        champion, shared_data, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    good = sorted((shared_data / "jtiptj_test/NORMAL").iterdir())[:2]
    shutil.copy(good[0], folder / good[0].name)
    shutil.copy(good[1], folder / "sub" / good[1].name)
    corrupt = sorted((shared_data / "jtiptj_test_unreadable/PNEUMONIA").iterdir())[0]
    shutil.copy(corrupt, folder / "sub" / corrupt.name)
    (folder / "notes.txt").write_text("not an X-ray\n")
    out = tmp_path / "preds.csv"
    rc = cli(["predict", str(folder), "--model", str(champion["models"]), "--out", str(out), "--quiet"])
    table = pd.read_csv(out, keep_default_na=False)
    assert rc == 1 and len(table) == 4
    bad = table[table.error != ""]
    assert sorted(Path(f).name for f in bad.file) == sorted([corrupt.name, "notes.txt"])
    assert bad.error.str.contains("not an image").all()
    ok = table[table.error == ""]
    assert set(ok.predicted) <= set(CLASSES) and np.allclose(probs(ok).sum(1), 1)
    assert "2 of 4 file(s) could not be classified" in capsys.readouterr().err


def test_every_batch_reaches_on_batch_with_what_a_grad_cam_needs(champion, tmp_path):
    files = [str(Image.fromarray(xray(i)).save(tmp_path / f"{i}.png") or tmp_path / f"{i}.png") for i in range(3)]
    predictor = load_predictor(champion["models"], device="cpu")
    predictor.batch_size = 2
    seen: list[PredictedBatch] = []
    table = predict_files(files, predictor, on_batch=seen.append)
    assert [b.files for b in seen] == [files[:2], files[2:]]
    b = seen[0]
    assert b.model.architecture == "cnn5" and b.images.dtype == np.uint8 and b.images.shape == (2, 32, 32)
    assert np.array_equal(b.images[0], load_square(files[0], 32, "stretch", "bilinear"))
    assert [CLASSES[i] for b in seen for i in b.predicted] == list(table.predicted)
    assert np.allclose(np.concatenate([b.probs for b in seen]), probs(table))


def test_predict_cam_writes_one_overlay_per_classified_file_mirroring_the_input_folders(champion, tmp_path,
                                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml: the validate section's default minimum (the repository's is 64 px)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(xray(0)).save(folder / "a.png")
    Image.fromarray(xray(1)).save(folder / "sub" / "b.png")
    (folder / "sub" / "notes.txt").write_text("not an X-ray\n")
    cams = tmp_path / "cams"
    rc = cli(["predict", str(folder), "--model", str(champion["models"]), "--out", str(tmp_path / "p.csv"),
              "--cam", str(cams), "--quiet"])
    assert rc == 1  # the text file is not an image: a row with its reason, no overlay
    written = sorted(p.relative_to(cams).as_posix() for p in cams.rglob("*.png"))
    assert written == ["a.png.png", "sub/b.png.png"]
    with Image.open(cams / "a.png.png") as im:
        assert im.width > 64 and im.height > 32


def test_a_folder_is_searched_recursively_without_hidden_files(tmp_path):
    for f in ("b.png", "a/c.dcm", "a/.DS_Store", ".git/x.png"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_files([tmp_path])] == ["a/c.dcm", "b.png"]


def test_a_linked_folder_inside_the_input_folder_is_searched_and_a_loop_or_a_repeat_is_listed_as_skipped(tmp_path):
    for f in ("in/a.png", "elsewhere/b.png", "elsewhere/deeper/c.png"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"")
    (tmp_path / "in/linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "in/again").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # the same folder twice
    (tmp_path / "elsewhere/deeper/loop").symlink_to(tmp_path / "in", target_is_directory=True)  # back up: a loop
    (tmp_path / "in/gone.png").symlink_to(tmp_path / "missing.png")  # a broken link: its row says it cannot be read
    skipped: list[tuple[Path, str]] = []
    found = find_files([tmp_path / "in"], skipped)
    assert [p.relative_to(tmp_path / "in").as_posix() for p in found] == [
        "a.png", "again/b.png", "again/deeper/c.png", "gone.png"]  # "again" sorts before "linked"
    assert sorted((p.relative_to(tmp_path / "in").as_posix(), why) for p, why in skipped) == [
        ("again/deeper/loop", f"a link to {tmp_path / 'in'}, a folder already searched"),
        ("linked", f"a link to {tmp_path / 'elsewhere'}, a folder already searched")]


def test_predict_classifies_a_linked_folder_mirrors_it_in_cam_and_lists_a_loop(champion, tmp_path, capsys,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in/sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    Image.fromarray(xray(0)).save(tmp_path / "in/sub/a.png")
    Image.fromarray(xray(1)).save(tmp_path / "elsewhere/b.png")
    (tmp_path / "in/linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "in/loop").symlink_to(tmp_path / "in", target_is_directory=True)
    assert cli(["predict", str(tmp_path / "in"), "--model", str(champion["models"]), "--out",
                str(tmp_path / "p.csv"), "--cam", str(tmp_path / "cams"), "--quiet"]) == 0
    assert list(pd.read_csv(tmp_path / "p.csv").file) == [str(tmp_path / "in/linked/b.png"),
                                                           str(tmp_path / "in/sub/a.png")]
    assert sorted(p.relative_to(tmp_path / "cams").as_posix() for p in (tmp_path / "cams").rglob("*.png")) == [
        "linked/b.png.png", "sub/a.png.png"]  # the overlays mirror the input folder, link included
    assert f"not searched: {tmp_path / 'in/loop'}: a link to {tmp_path / 'in'}, a folder already searched" in (
        capsys.readouterr().err)


def test_without_a_champion_predict_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    Image.fromarray(xray(0)).save(tmp_path / "x.png")
    assert cli(["predict", "x.png"]) == 2
    err = capsys.readouterr().err
    assert "no champion of 'lungxray-cxr'" in err and "--model models:/<name>@champion" in err
    assert not (tmp_path / "mlruns").exists()  # looking for it created no store


def test_the_default_model_is_the_champion_of_the_configured_registry(champion, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(json.dumps({"train": {"mlflow": {"tracking_uri": champion["uri"]}},
                                                      "promote": {"registered_model": NAME}}))
    p = load_predictor(None, device="cpu")
    assert p.source == f"models:/{NAME}@champion" and p.classes == CLASSES


def unwritable_outputs(tmp_path) -> list[tuple[Path, Path]]:
    """(--out, the folder it names) that cannot be written: below a file, and (where there is one) in /proc."""
    (tmp_path / "a_file").write_text("")
    outs = [(tmp_path / "a_file" / "preds.csv", tmp_path / "a_file")]
    return outs + ([(Path("/proc/nope/x.csv"), Path("/proc/nope"))] if Path("/proc/self").is_dir() else [])


def test_an_out_or_cam_that_cannot_be_written_is_a_usage_error_before_any_model_or_image_is_read(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("lungxray.serve.predict.load_predictor", lambda *a, **k: pytest.fail("a model was loaded"))
    Image.fromarray(xray(0)).save(tmp_path / "x.png")
    for out, folder in unwritable_outputs(tmp_path):
        assert cli(["predict", str(tmp_path / "x.png"), "--out", str(out), "--model", "m"]) == 2
        err = capsys.readouterr().err
        assert f"--out {out}: cannot write in the folder {folder}" in err and "Traceback" not in err, err
        assert cli(["predict", str(tmp_path / "x.png"), "--cam", str(out), "--model", "m"]) == 2
        assert f"--cam {out}: cannot write in the folder {out}" in capsys.readouterr().err
    assert cli(["predict", str(tmp_path / "x.png"), "--out", str(tmp_path), "--model", "m"]) == 2
    assert f"--out {tmp_path} is a folder" in capsys.readouterr().err


def test_usage_errors_exit_2_and_failed_rows_exit_1_as_the_help_says(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["predict", str(tmp_path / "empty"), "--model", "m"]) == 2  # nothing to classify: a usage error
    assert "no files found under" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        cli(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0
    assert ("Exit status: 0 every file was classified, 1 some files could not be classified (their reason is in the "
            "error column; the others were classified), 2 usage error (a bad option, no model, an output that cannot "
            "be written, no files found): nothing was classified.") in text


def write_params(folder: Path, **sections) -> None:
    """A params.yaml in ``folder`` with ``sections`` (a fetch section gets the one source it needs)."""
    if "fetch" in sections:
        source = {"name": "site", "kind": "folder", "path": "data/site", "labels": {"NORMAL": "normal"}}
        sections["fetch"] = {"sources": [source], **sections["fetch"]}
    (folder / "params.yaml").write_text(json.dumps(sections))


def test_predict_takes_max_pixels_whose_default_is_fetch_max_pixels_as_its_hint_says(
        champion, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(xray(0)).save(tmp_path / "x.png")  # 64x48 = 3072 pixels
    args = ["predict", "x.png", "--model", str(champion["models"]), "--out", "p.csv", "--quiet"]

    def error() -> str:
        return pd.read_csv(tmp_path / "p.csv", keep_default_na=False).error[0]

    assert cli(args + ["--max-pixels", "3071"]) == 1
    assert error().startswith("too many pixels: 64x48 = 3072 pixels > max_pixels 3071") and "--max-pixels" in error()
    assert cli(args + ["--max-pixels", "3072"]) == 0 and error() == ""
    write_params(tmp_path, fetch={"max_pixels": 3000})
    assert cli(args) == 1 and "max_pixels 3000 " in error()  # the default: fetch.max_pixels of params.yaml
    assert cli(args + ["--max-pixels", "4000"]) == 0  # the option wins
    with pytest.raises(SystemExit):
        cli(["predict", "--help"])
    assert "default: fetch.max_pixels of params.yaml" in " ".join(capsys.readouterr().out.split())


def test_the_registered_model_refuses_a_decompression_bomb_with_a_hint_that_applies_to_it(champion, bomb_png,
                                                                                          tmp_path):
    import mlflow

    mlflow.set_tracking_uri(champion["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion", dst_path=str(tmp_path))
    [error] = model.predict({"image": [str(bomb_png)]}).error
    assert error.startswith("too many pixels: 13000x13000 = 169000000 pixels > max_pixels 60000000"), error
    assert "--max-pixels" not in error and "fetch.max_pixels" not in error
    assert "the registered model decodes at most 60000000 pixels: send a smaller image" in error


def test_a_registered_ensemble_refuses_what_its_members_refuse_with_the_registered_models_hint(champion, bomb_png,
                                                                                               tmp_path):
    import mlflow

    from lungxray.serve.mlflow_models import log_ensemble_model

    mlflow.set_tracking_uri(champion["uri"])
    with mlflow.start_run():
        info = log_ensemble_model(mlflow, ["a", "b"], [champion["models"] / "model.pt"] * 2)
    model = mlflow.pyfunc.load_model(info.model_uri, dst_path=str(tmp_path))
    Image.fromarray(xray(2)).save(tmp_path / "x.png")
    Image.fromarray(xray(2, (5, 5))).save(tmp_path / "tiny.png")
    errors = model.predict({"image": [str(tmp_path / "x.png"), str(tmp_path / "tiny.png"), str(bomb_png)]}).error
    assert errors[0] == "" and errors[1].startswith("too small: 5x5 pixels")
    assert errors[2].endswith("the registered model decodes at most 60000000 pixels: send a smaller image)")


def test_an_image_smaller_than_the_validate_stage_accepts_gets_an_error_row(champion, tmp_path, monkeypatch):
    import mlflow

    from lungxray.data.validate import ValidateParams
    from lungxray.serve.predictor import MIN_HEIGHT, MIN_WIDTH, classify

    assert (MIN_WIDTH, MIN_HEIGHT) == (ValidateParams().min_width, ValidateParams().min_height)

    files = []
    for w, h in ((1, 1), (5, 5), (31, 48), (64, 31), (32, 32), (64, 48)):
        files.append(tmp_path / f"{w}x{h}.png")
        Image.fromarray(xray(1, (w, h))).save(files[-1])
    predictor = load_predictor(champion["models"], device="cpu")
    table = predict_files(files, predictor)
    assert (table.error[4:] == "").all() and (table.predicted[:4] == "").all()
    assert table.error[0] == ("too small: 1x1 pixels, below the validate stage's minimum of 32x32 (validate.min_width "
                              "and min_height): the pipeline would not have used it")
    assert table.error[1:4].str.startswith("too small: ").all()
    [row] = classify(predictor, [np.full((5, 5), 128, np.uint8)])
    assert row["error"].startswith("too small: 5x5 pixels")
    mlflow.set_tracking_uri(champion["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion", dst_path=str(tmp_path))
    served_errors = model.predict({"image": [files[1].read_bytes(), files[-1].read_bytes()]}).error
    assert served_errors[0].startswith("too small: 5x5 pixels") and served_errors[1] == ""
    monkeypatch.chdir(tmp_path)  # lungxray predict applies the validate section of params.yaml when there is one
    write_params(tmp_path, validate={"min_width": 40, "min_height": 40})
    assert cli(["predict", *map(str, files[4:]), "--model", str(champion["models"]), "--out", "p.csv", "--quiet"]) == 1
    errors = pd.read_csv(tmp_path / "p.csv", keep_default_na=False).error
    assert errors[0].startswith("too small: 32x32 pixels, below the validate stage's minimum of 40x40") and errors[1] == ""


# ----------------------------------------------------------------------------------------------------------------------
# the registered MLflow model


def test_the_registered_model_takes_paths_bytes_base64_and_arrays_and_answers_bad_inputs_per_row(champion, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(champion["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion", dst_path=str(tmp_path))
    img = xray(5)
    Image.fromarray(img).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    out = model.predict(pd.DataFrame({"image": [str(tmp_path / "x.png"), data, base64.b64encode(data).decode(), img,
                                                b"not an image", str(tmp_path / "missing.png")]}))
    assert list(out.columns) == ["predicted", *[f"prob_{c}" for c in CLASSES], "error"]
    p = probs(out)
    np.testing.assert_allclose(p[:4], np.repeat(p[:1], 4, axis=0), atol=1e-9)
    np.testing.assert_allclose(p[0], reference_proba(champion["models"], tmp_path / "x.png"), atol=1e-9)
    assert (out.error[:4] == "").all() and out.error[4].startswith("not an image")
    assert "neither an existing file nor base64" in out.error[5]
    batch = model.predict({"image": np.stack([img, img])})  # (N, H, W) uint8
    np.testing.assert_allclose(probs(batch), np.repeat(p[:1], 2, axis=0), atol=1e-9)
    meta = mlflow.models.get_model_info(f"models:/{NAME}@champion").metadata
    assert meta["classes"] == CLASSES and meta["image_size"] == 32 and meta["aspect"] == "stretch"
    assert meta["resample"] == "bilinear" and len(meta["mean"]) == 3 and "base64" in meta["inputs"]


LOAD_ELSEWHERE = """
import json, sys
from pathlib import Path
sys.path[:] = [p for p in sys.path if not (Path(p or '.') / 'lungxray').is_dir()]  # no repository, no editable install
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1], dst_path=sys.argv[3])
import lungxray
out = model.predict({'image': [sys.argv[2]]})
print(json.dumps({'lungxray': lungxray.__file__, 'path': sys.path, 'out': out.to_dict(orient='records')}))
"""


def clean_env(uri: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}


LOG_BOTH = """
import sys
from pathlib import Path
import mlflow
from lungxray.serve.mlflow_models import log_ensemble_model, log_image_model
mlflow.set_tracking_uri(sys.argv[1])
model = Path(sys.argv[2])
with mlflow.start_run(run_name='logged-quietly'):
    print(log_image_model(mlflow, model).model_uri)
    print(log_ensemble_model(mlflow, ['a', 'b'], [model, model]).model_uri)
"""


def test_a_model_and_an_ensemble_are_logged_from_code_with_an_input_example_and_no_warning(champion, tmp_path):
    """Logged as the register stage logs them (a fresh process, Python's default warning filters), nothing on
    stderr is a warning: MLflow warned there of CloudPickle, of a predict without type hints and of a missing input
    example. Each model is its model file and artifacts (no pickled object), with the input example, which MLflow
    answered while logging (a failure would have been a warning)."""
    import mlflow

    env = {**clean_env(champion["uri"]), "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, "-c", LOG_BOTH, champion["uri"], str(champion["models"] / "model.pt")],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    warned = [line for line in res.stderr.splitlines() if "warn" in line.lower()]
    assert not warned, "\n".join(warned)
    uris = res.stdout.split()
    assert len(uris) == 2
    mlflow.set_tracking_uri(champion["uri"])
    for uri, model_file in zip(uris, ("pyfunc_image.py", "pyfunc_ensemble.py")):
        info = mlflow.models.get_model_info(uri)
        flavor = info.flavors["python_function"]
        assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
        assert Path(flavor["model_code_path"]).name == model_file
        assert info.saved_input_example_info["type"] == "dataframe"


@pytest.mark.shared
@pytest.mark.slow
def test_the_registered_model_loads_and_predicts_outside_the_repository(champion, shared_data, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    xray_file = sorted((shared_data / "jtiptj_test/PNEUMONIA").iterdir())[0]
    (elsewhere / "download").mkdir()
    res = subprocess.run([sys.executable, "-c", LOAD_ELSEWHERE, f"models:/{NAME}@champion", str(xray_file),
                          str(elsewhere / "download")],
                         cwd=elsewhere, env=clean_env(champion["uri"]), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    venv = Path(sys.prefix).resolve()  # CI's virtual environment lives inside the clone: its site-packages may stay
    source = [p for p in doc["path"][1:] if p and not Path(p).resolve().is_relative_to(venv)]
    assert not any(Path(p).resolve().is_relative_to(REPO) or p.endswith("/src") for p in source), source
    assert not doc["lungxray"].startswith(str(REPO)) and "/code/lungxray/" in doc["lungxray"]
    row = doc["out"][0]
    assert row["error"] == "" and row["predicted"] in CLASSES
    np.testing.assert_allclose([row[f"prob_{c}"] for c in CLASSES],
                               reference_proba(champion["models"], xray_file), atol=1e-6)


def strict_json(text: str | bytes):
    """JSON as a strict parser reads it: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def wait_for_ping(proc: subprocess.Popen, port: int) -> None:
    """Until the server answers /ping (or dies: then its output is the failure)."""
    import time
    import urllib.request

    while proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping") as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow models serve exited ({proc.returncode}): {proc.stdout.read()[-3000:]}")


def post(port: int, body: dict) -> dict:
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return strict_json(r.read())


def local_op_threshold(champion, name: str) -> float:
    import torch

    ck = torch.load(champion["models"] / "model.pt", map_location="cpu", weights_only=True)
    return ck["operating_points"][name]["threshold"]


@pytest.mark.shared
@pytest.mark.slow
def test_the_served_champion_answers_a_real_xray_and_applies_an_operating_point_parameter(champion, shared_data, tmp_path):
    import signal
    import urllib.error

    import mlflow

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], cwd=tmp_path,
                            env=clean_env(champion["uri"]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    xray_file = sorted((shared_data / "jtiptj_test/COVID19").iterdir())[0]
    body = {"dataframe_split": {"columns": ["image"],
                                "data": [[base64.b64encode(xray_file.read_bytes()).decode()],
                                         [base64.b64encode(b"junk").decode()], ["not base64!"]]}}
    try:
        wait_for_ping(proc, port)
        answer = post(port, body)["predictions"]
        flagged = post(port, {**body, "params": {"operating_point": "pneumonia@youden"}})["predictions"]
        with pytest.raises(urllib.error.HTTPError) as unknown:
            post(port, {**body, "params": {"operating_point": "pneumonia@sens50"}})
        assert unknown.value.code == 400 and "pneumonia@sens95" in unknown.value.read().decode()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    assert answer[0]["predicted"] in CLASSES and answer[0]["error"] == ""
    served = [answer[0][f"prob_{c}"] for c in CLASSES]
    assert sum(served) == pytest.approx(1)
    mlflow.set_tracking_uri(champion["uri"])
    local = mlflow.pyfunc.load_model(f"models:/{NAME}@champion", dst_path=str(tmp_path)).predict(
        {"image": [str(xray_file)]})
    np.testing.assert_allclose(served, probs(local)[0], atol=1e-6)
    assert answer[1]["predicted"] == "" and answer[1]["error"].startswith("not an image")
    assert answer[1]["prob_normal"] is None and "base64" in answer[2]["error"]  # JSON null; its own error row
    threshold = local_op_threshold(champion, "pneumonia@youden")
    assert flagged[0]["pneumonia@youden"] == (flagged[0]["prob_pneumonia"] >= threshold)


# ----------------------------------------------------------------------------------------------------------------------
# the registered model as served: a JSON request parsed as `mlflow models serve` parses it, the answer written as the
# server writes it (mlflow.models.predict in this process: the same parsing, serving flag and JSON writer)


def served(champion, body: dict, tmp_path) -> list[dict]:
    """The rows the served champion answers to ``body`` (checked to be strict JSON)."""
    import mlflow

    mlflow.set_tracking_uri(champion["uri"])
    request, answer = tmp_path / "request.json", tmp_path / "answer.json"
    request.write_text(json.dumps(body))
    mlflow.models.predict(f"models:/{NAME}@champion", input_path=str(request), output_path=str(answer),
                          content_type="json", env_manager="local")
    return strict_json(answer.read_text())["predictions"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def split_body(*cells) -> dict:
    return {"dataframe_split": {"columns": ["image"], "data": [[c] for c in cells]}}


def test_one_invalid_base64_cell_gets_its_own_error_row_and_the_others_are_classified(champion, tmp_path):
    Image.fromarray(xray(3)).save(tmp_path / "x.png")
    good = b64((tmp_path / "x.png").read_bytes())
    rows = served(champion, split_body(good, "not base64 at all!", good[:-3], good), tmp_path)
    assert [r["error"] for r in rows][::3] == ["", ""] and rows[0]["predicted"] in CLASSES
    assert all("base64" in r["error"] and r["predicted"] == "" for r in rows[1:3])
    np.testing.assert_allclose([rows[0][f"prob_{c}"] for c in CLASSES],
                               reference_proba(champion["models"], tmp_path / "x.png"), atol=1e-6)


def test_a_failed_row_is_served_with_null_probabilities_never_nan(champion, tmp_path):
    rows = served(champion, split_body(b64(b"junk, not an image")), tmp_path)  # strict_json refuses NaN
    assert rows[0]["error"].startswith("not an image") and rows[0]["predicted"] == ""
    assert [rows[0][f"prob_{c}"] for c in CLASSES] == [None] * len(CLASSES)


def test_the_inputs_and_instances_forms_are_decoded_like_dataframe_split(champion, tmp_path):
    Image.fromarray(xray(4)).save(tmp_path / "x.png")
    good = b64((tmp_path / "x.png").read_bytes())
    expected = reference_proba(champion["models"], tmp_path / "x.png")
    for body in ({"inputs": {"image": [good, good]}}, {"instances": [{"image": good}, {"image": good}]},
                 split_body(good, good)):
        rows = served(champion, body, tmp_path)
        assert [r["error"] for r in rows] == ["", ""], body.keys()
        np.testing.assert_allclose([[r[f"prob_{c}"] for c in CLASSES] for r in rows], [expected, expected],
                                   atol=1e-6)


def test_a_served_model_never_opens_a_path_it_is_sent(champion, tmp_path):
    Image.fromarray(xray(5)).save(tmp_path / "x.png")  # a real image file on the server's disk
    for body in (split_body(str(tmp_path / "x.png")), {"inputs": {"image": [str(tmp_path / "x.png")]}}):
        [row] = served(champion, body, tmp_path)
        assert row["predicted"] == "" and "base64" in row["error"], row


def test_mlflows_scoring_server_says_it_is_serving_before_it_loads_the_model(champion, tmp_path, monkeypatch):
    """What keeps a served model from opening paths (and makes it answer null) is the flag MLflow's server sets."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    from lungxray.serve.image_model import SERVING_FLAG, serving

    monkeypatch.setenv(SERVING_FLAG, "")  # undone after the test
    assert not serving()
    mlflow.set_tracking_uri(champion["uri"])
    scoring_server.init(mlflow.pyfunc.load_model(f"models:/{NAME}@champion", dst_path=str(tmp_path)))
    assert serving()
