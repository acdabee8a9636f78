"""The temperature and operating points stored with a tiny trained model: in model.pt, in the MLflow model (its
metadata and its probabilities), in ``lungxray predict --operating-point``, and in the evaluate stage's outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lungxray.cli.commands import main as cli
from lungxray.data.preprocess import load_split
from lungxray.evaluate.evaluation import EvaluateParams, evaluate_model
from lungxray.models.inference import predict_logits, softmax_t

from helpers.processed import CLASSES

EVAL = EvaluateParams(bootstrap=100, latency_batches=1, batch_size=16, tta="flips_shifts")


@pytest.fixture(scope="module")
def trained(trained_cnn5, tmp_path_factory):
    """A copy of the session's cnn5 (32 px images, its MLflow model logged to a store of its own): these tests
    evaluate into its metrics and change its test images."""
    run = trained_cnn5.copy(tmp_path_factory.mktemp("calibrated"))
    ck = torch.load(run.model_pt, map_location="cpu", weights_only=True)
    return {"root": run.root, "processed": run.processed, "train": run.train, "ck": ck, "mlflow": run.params.mlflow,
            "model_uri": run.model_uri}


def val_logits(trained) -> tuple[np.ndarray, np.ndarray]:
    from lungxray.models.trained import load_trained_model

    model = load_trained_model(trained["root"] / "models/cnn5/model.pt")
    x, y = load_split(trained["processed"], "val")
    return model.logits(x), y


@pytest.mark.slow
def test_model_pt_carries_the_temperature_and_the_operating_points_fitted_on_val(trained):
    from lungxray.models.calibration import choose_operating_points, fit_temperature

    ck, (logits, y) = trained["ck"], val_logits(trained)
    assert ck["temperature"] == pytest.approx(fit_temperature(logits, y), rel=1e-6)
    assert ck["calibration"]["fitted_on"] == "val" and ck["calibration"]["val_images"] == len(y) == 24
    expected = choose_operating_points(y, softmax_t(logits, ck["temperature"]), CLASSES, 0.95)
    assert set(ck["operating_points"]) == set(expected)
    for name, op in list(expected.items())[1:]:  # (after argmax) the train stage's memory format moves last bits
        assert ck["operating_points"][name]["threshold"] == pytest.approx(op["threshold"], rel=1e-5)
    assert trained["train"]["temperature"] == ck["temperature"]
    from lungxray.models.trained import load_trained_model

    model = load_trained_model(trained["root"] / "models/cnn5/model.pt")  # what every consumer gets
    assert (model.temperature, model.operating_points, model.calibration) == (
        ck["temperature"], ck["operating_points"], ck["calibration"])
    assert np.allclose(model.proba(load_split(trained["processed"], "val")[0]), softmax_t(logits, ck["temperature"]))


@pytest.mark.slow
def test_the_mlflow_model_gives_softmax_of_the_logits_over_the_stored_temperature(trained, tmp_path):
    import mlflow

    from lungxray.serve.predictor import predictor_from_file

    uri, ck = trained["model_uri"], trained["ck"]
    assert abs(ck["temperature"] - 1.0) > 1e-3  # otherwise the comparison could not tell
    mlflow.set_tracking_uri(trained["mlflow"].tracking_uri)
    x, _ = load_split(trained["processed"], "val")
    images = np.array(x[:8])
    out = mlflow.pyfunc.load_model(uri, dst_path=str(tmp_path)).predict({"image": images})
    p = predictor_from_file(trained["root"] / "models/cnn5/model.pt", device="cpu")
    squares = np.stack([p.square(im) for im in images])
    expected = softmax_t(predict_logits(p.network, squares, p.mean, p.std), ck["temperature"])
    np.testing.assert_allclose(out[[f"prob_{c}" for c in CLASSES]].to_numpy(float), expected, atol=1e-6)
    meta = mlflow.models.get_model_info(uri).metadata
    assert meta["temperature"] == pytest.approx(ck["temperature"])
    assert set(meta["operating_points"]) == set(ck["operating_points"])
    assert "calibrated" in meta["probabilities"]


@pytest.mark.slow
def test_the_mlflow_model_applies_an_operating_point_passed_as_a_parameter(trained, tmp_path):
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(trained["mlflow"].tracking_uri)
    model = mlflow.pyfunc.load_model(trained["model_uri"], dst_path=str(tmp_path))
    x, _ = load_split(trained["processed"], "val")
    images = list(np.array(x[:10])) + [b"not an image"]
    name = "pneumonia@youden"
    threshold = trained["ck"]["operating_points"][name]["threshold"]
    out = model.predict({"image": images}, params={"operating_point": name})
    assert list(out.columns) == ["predicted", *[f"prob_{c}" for c in CLASSES], name, "error"]
    ok = out.error == ""
    assert list(out.loc[ok, name]) == list(out.loc[ok, "prob_pneumonia"] >= threshold)
    assert out.loc[~ok, name].tolist() == [""]
    plain = model.predict({"image": images})  # default: argmax, the columns of the signature
    assert list(plain.columns) == ["predicted", *[f"prob_{c}" for c in CLASSES], "error"]
    with pytest.raises(MlflowException, match="pneumonia@sens95"):  # the error lists the model's operating points
        model.predict({"image": images[:1]}, params={"operating_point": "pneumonia@sens50"})


@pytest.mark.slow
def test_predict_operating_point_adds_the_flag_of_its_stored_threshold(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml: the validate section's default minimum (the repository's is 64 px)
    x, _ = load_split(trained["processed"], "val")
    for i in range(6):
        Image.fromarray(np.array(x[i])).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    name = "pneumonia@youden"
    threshold = trained["ck"]["operating_points"][name]["threshold"]
    models = str(trained["root"] / "models/cnn5")
    assert cli(["predict", str(tmp_path), "--model", models, "--operating-point", name, "--out",
                str(tmp_path / "p.csv"), "--quiet"]) == 1  # the broken file fails the exit status, as before
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    ok = table[table.error == ""]
    assert list(ok[name].astype(str)) == [str(v) for v in (pd.to_numeric(ok.prob_pneumonia) >= threshold)]
    assert set(ok[name].astype(str)) <= {"True", "False"}
    assert table.loc[table.error != "", name].tolist() == [""]
    assert cli(["predict", str(tmp_path / "0.png"), "--model", models, "--out", str(tmp_path / "a.csv"),
                "--quiet"]) == 0
    assert not any("@" in c for c in pd.read_csv(tmp_path / "a.csv").columns)  # argmax: no flag column
    assert cli(["predict", str(tmp_path / "0.png"), "--model", models, "--operating-point", "pneumonia@sens50"]) == 2
    assert "pneumonia@sens95" in capsys.readouterr().err  # the error lists the model's operating points


@pytest.mark.slow
def test_evaluate_reports_calibration_tta_and_operating_points_chosen_on_val_only(trained):
    root, processed, ck = trained["root"], trained["processed"], trained["ck"]

    def evaluate():
        return evaluate_model("cnn5", processed, root / "models/cnn5/model.pt", root / "metrics/cnn5",
                              root / "reports/cnn5", EVAL, trained["train"], trained["mlflow"])

    out = evaluate()
    logits, y = val_logits(trained)
    assert out["calibration"]["temperature"] == ck["temperature"]
    for split in ("val", "test"):
        c = out["calibration"][split]
        assert set(c) == {"ece_before", "ece_after", "nll_before", "nll_after"}
        assert out["tta"][split]["plain"]["accuracy"] == out[split]["accuracy"]
        assert out["tta"][split]["tta"]["accuracy"] is not None
    assert out["calibration"]["val"]["nll_after"] <= out["calibration"]["val"]["nll_before"] + 1e-9
    assert out["val"]["accuracy"] == pytest.approx(float((logits.argmax(1) == y).mean()))  # T keeps the argmax
    ops = out["operating_points"]
    assert ops["stored"] == ck["operating_points"]
    assert ops["test"]["pneumonia@sens95"]["pneumonia"]["n_samples"] == 6
    assert ops["val"]["pneumonia@sens95"]["pneumonia"]["sensitivity"] >= 0.95
    assert {r["at"] for r in ops["prevalence_table"]} == {"val prevalence", "test prevalence", "set"}
    report = (root / "reports/cnn5/evaluation.md").read_text()
    assert "pneumonia@youden" in report and "Test-time augmentation" in report
    assert json.loads((root / "metrics/cnn5/eval.json").read_text())["operating_points"]["stored"] == ops["stored"]

    test = np.load(processed / "test.npy")
    np.save(processed / "test.npy", 255 - test)  # other test images: the thresholds must not move
    changed = evaluate()
    assert changed["operating_points"]["stored"] == ops["stored"]
    assert changed["calibration"]["temperature"] == out["calibration"]["temperature"]
    assert changed["calibration"]["test"] != out["calibration"]["test"]  # the test figures did change
