"""The ensemble model: the mean of its members' probabilities, scored, ranked, gated and registered like a model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lungxray.core.errors import LungxrayError
from lungxray.core.io import write_json
from lungxray.core.tracking import MlflowParams
from lungxray.ensemble.evaluation import evaluate_ensemble, mean_predictions
from lungxray.ensemble.members import EnsembleParams, member_record, resolve_members
from lungxray.evaluate.evaluation import EvaluateParams, evaluate_model
from lungxray.evaluate.metrics import predictions_table
from lungxray.train.fit import train_model

from conftest import REPO
from helpers.processed import CLASSES, make_processed, train_params
from helpers.stages import run_stage_script

EVAL = EvaluateParams(bootstrap=100, latency_batches=2, batch_size=16)
MEMBERS = ("cnn5", "cnn8")


def table(ids, labels, probs) -> pd.DataFrame:
    return predictions_table(ids, ids, np.array([CLASSES.index(l) for l in labels]), np.asarray(probs, float),
                             CLASSES)


# ---------------------------------------------------------------------------------------------------------------------
# the mean, and what it refuses


def test_the_mean_is_taken_image_by_image_whatever_order_the_members_wrote_their_rows_in():
    a = table(["x", "y"], ["normal", "covid19"], [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    b = table(["y", "x"], ["covid19", "normal"], [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    mean = mean_predictions({"a": a, "b": b})
    assert mean.id.tolist() == ["x", "y"] and mean.label.tolist() == ["normal", "covid19"]
    assert np.allclose(mean[["prob_normal", "prob_pneumonia", "prob_covid19"]], [[0.8, 0.15, 0.05], [0.1, 0.1, 0.8]])


@pytest.mark.parametrize("other, why", [
    (table(["x", "z"], ["normal", "covid19"], [[1, 0, 0], [0, 0, 1]]), "different images"),
    (table(["x"], ["normal"], [[1, 0, 0]]), "different images"),
    (table(["x", "y"], ["normal", "pneumonia"], [[1, 0, 0], [0, 1, 0]]), "different labels"),
    (table(["x", "y"], ["normal", "covid19"], [[1, 0, 0], [0, 0, 1]]).drop(columns="prob_covid19"), "classes"),
])
def test_member_predictions_over_other_images_labels_or_classes_are_refused_naming_the_member(other, why):
    a = table(["x", "y"], ["normal", "covid19"], [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    with pytest.raises(LungxrayError, match=f"predictions of late and first do not pair.*{why}"):
        mean_predictions({"first": a, "late": other})


def test_members_must_be_trained_models_at_least_two_and_the_default_is_every_trained_model():
    assert resolve_members(EnsembleParams(enabled=True), ["cnn5", "cnn8", "resnet18"]) == ["cnn5", "cnn8", "resnet18"]
    assert resolve_members(EnsembleParams(members=["resnet18", "cnn5"]), ["cnn5", "resnet18"]) == ["resnet18", "cnn5"]
    with pytest.raises(LungxrayError, match=r"\['vgg16'\] are not in train.models"):
        resolve_members(EnsembleParams(members=["cnn5", "vgg16"]), ["cnn5", "cnn8"])
    with pytest.raises(LungxrayError, match="at least two members"):
        resolve_members(EnsembleParams(), ["cnn5"])


def test_check_params_refuses_an_enabled_ensemble_of_untrained_members():
    from lungxray.cli.params_check import parse_params
    from lungxray.core.errors import ConfigError

    data = yaml.safe_load((REPO / "configs" / "shared-data.yaml").read_text())
    assert parse_params(data).ensemble.enabled
    data["ensemble"]["members"] = ["cnn5", "vgg16"]
    with pytest.raises(ConfigError, match="vgg16"):
        parse_params(data)
    data["ensemble"]["enabled"] = False
    parse_params(data)


# ---------------------------------------------------------------------------------------------------------------------
# the stage, the leaderboard, the gate and the registry on two tiny trained models


def train_and_evaluate_members(root: Path, processed: Path, ml: MlflowParams) -> None:
    """Each of MEMBERS trained one epoch and evaluated, under root/models, root/metrics and root/reports."""
    for name in MEMBERS:
        t = train_model(name, train_params(root, models=list(MEMBERS), epochs=1, mlflow=ml), processed,
                        root / "models" / name, root / "metrics" / name, progress=False)
        evaluate_model(name, processed, root / "models" / name / "model.pt", root / "metrics" / name,
                       root / "reports" / name, EVAL, t, ml)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """cnn5 and cnn8 trained one epoch and evaluated, laid out as the pipeline does, in a scratch repository whose
    params (the CI profile) enable the ensemble of both."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("ensemble")
    processed = make_processed(root / "data", n_train=48, n_val=24, size=32)
    index = pd.read_csv(processed / "index.csv")
    index["unit"] = index.split + "/u" + (index.row // 2).astype(str)
    index.to_csv(processed / "index.csv", index=False)
    ml = MlflowParams(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db", artifact_dir=str(root / "mlruns/art"))
    train_and_evaluate_members(root, processed, ml)
    params = yaml.safe_load((REPO / "configs" / "shared-data.yaml").read_text())
    params["train"].update(models=list(MEMBERS), mlflow={"tracking_uri": ml.tracking_uri,
                                                         "artifact_dir": ml.artifact_dir})
    params["ensemble"] = {"enabled": True, "members": []}
    params["evaluate"] = EVAL.model_dump()
    params["promote"].update(registered_model="ensemble-cxr", bootstrap=100)
    params["gate"]["baseline"] = "baseline.json"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage_script(root, "ensemble_member.py", MEMBERS[0])  # the stage for one, the same library call for the other
    write_json(root / "metrics/ensemble_members/cnn8.json",
               member_record("cnn8", root / "metrics/cnn8", root / "models/cnn8/model.pt"))
    run_stage_script(root, "ensemble.py")
    return root


@pytest.mark.slow
def test_the_stage_writes_the_mean_of_its_members_predictions_scored_like_a_model(repo):
    for split in ("val", "test"):
        members = [pd.read_csv(repo / f"metrics/{m}/predictions_{split}.csv") for m in MEMBERS]
        ens = pd.read_csv(repo / f"metrics/ensemble/predictions_{split}.csv")
        cols = [f"prob_{c}" for c in CLASSES]
        assert ens.id.tolist() == members[0].id.tolist()
        assert np.allclose(ens[cols], (members[0][cols] + members[1][cols]) / 2, atol=1e-12)
        headline = json.loads((repo / f"metrics/ensemble/headline_{split}.json").read_text())
        assert 0 <= headline["macro_recall"] <= 1 and "macro_recall_ci_low" in headline
    e = json.loads((repo / "metrics/ensemble/eval.json").read_text())
    single = json.loads((repo / "metrics/cnn5/eval.json").read_text())
    assert e["members"] == list(MEMBERS) and e["kind"] == "ensemble"
    assert e["val_set"] == single["val_set"] and e["test_set"] == single["test_set"]
    assert set(e["val"]) == set(single["val"])  # the same figures as a single model's evaluation
    assert (repo / "reports/ensemble/confusion_matrix.png").exists() and (repo / "reports/ensemble/roc.png").exists()
    t = json.loads((repo / "metrics/ensemble/train.json").read_text())
    trains = [json.loads((repo / f"metrics/{m}/train.json").read_text()) for m in MEMBERS]
    assert t["trainable_parameters"] == sum(x["trainable_parameters"] for x in trains)
    assert t["mlflow_run_id"]


@pytest.mark.slow
def test_without_an_official_test_set_the_ensemble_writes_an_empty_table_and_no_official_figures(repo):
    official = pd.read_csv(repo / "metrics/ensemble/predictions_test_official.csv")
    assert official.empty and list(official.columns) == ["id", "unit", "label", *(f"prob_{c}" for c in CLASSES)]
    assert "test_official" not in json.loads((repo / "metrics/ensemble/eval.json").read_text())


def with_official_test(processed: Path) -> Path:
    """Benchmark mode: the official test set is the test split plus two copies of its images under their own ids."""
    index = pd.read_csv(processed / "index.csv")
    test = index[index.split == "test"]
    copies = pd.concat([test, test.iloc[:2].assign(id=test.id.iloc[:2] + "-copy")], ignore_index=True)
    copies = copies.assign(split="test_official", row=range(len(copies)))
    pd.concat([index, copies], ignore_index=True).to_csv(processed / "index.csv", index=False)
    x = np.load(processed / "test.npy")
    np.save(processed / "test_official.npy", np.concatenate([x, x[:2]]))
    return processed


@pytest.mark.slow
def test_in_benchmark_mode_the_ensemble_reports_the_official_test_figures_of_its_members_mean(tmp_path):
    from lungxray.evaluate.metrics import compute_metrics, summary

    processed = make_processed(tmp_path / "data", n_train=24, n_val=12, size=32)
    index = pd.read_csv(processed / "index.csv")
    index.assign(unit=index.split + "/u" + (index.row // 2).astype(str)).to_csv(processed / "index.csv", index=False)
    with_official_test(processed)
    ml = MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db", artifact_dir=str(tmp_path / "art"))
    train_and_evaluate_members(tmp_path, processed, ml)
    for name in MEMBERS:
        write_json(tmp_path / f"metrics/ensemble_members/{name}.json",
                   member_record(name, tmp_path / "metrics" / name, tmp_path / "models" / name / "model.pt"))
    out = evaluate_ensemble(EnsembleParams(enabled=True), list(MEMBERS), processed, tmp_path / "metrics",
                            tmp_path / "models", tmp_path / "reports/ensemble", EVAL)
    cols = [f"prob_{c}" for c in CLASSES]
    members = [pd.read_csv(tmp_path / f"metrics/{m}/predictions_test_official.csv") for m in MEMBERS]
    ens = pd.read_csv(tmp_path / "metrics/ensemble/predictions_test_official.csv")
    assert len(ens) == 8 and ens.id.tolist() == members[0].id.tolist()
    mean = (members[0][cols] + members[1][cols]).to_numpy() / 2
    assert np.allclose(ens[cols], mean, atol=1e-12)
    y = members[0].label.map(CLASSES.index).to_numpy()
    expected = summary(compute_metrics(y, mean, CLASSES, EVAL, units=members[0].unit.astype(str).tolist()))
    written = json.loads((tmp_path / "metrics/ensemble/eval.json").read_text())
    official = written["test_official"]  # the members' mean scored as a model, with its no-skill line beside it
    assert {k: official[k] for k in expected} == json.loads(json.dumps(expected))
    assert out["test_official"]["n_samples"] == 8
    assert {"no_skill", "lift_over_majority", "no_better_than_majority"} <= set(official)
    assert not any("test_official" in w for w in written["warnings"])


@pytest.mark.slow
def test_a_member_evaluated_before_the_official_predictions_existed_asks_for_dvc_repro(repo, tmp_path):
    work = tmp_path / "repo"
    shutil.copytree(repo, work, ignore=shutil.ignore_patterns("mlruns"))
    (work / "metrics/cnn8/predictions_test_official.csv").unlink()
    with pytest.raises(LungxrayError, match=r"predictions_test_official.csv missing: evaluate cnn8 first \(dvc repro"):
        evaluate_ensemble(EnsembleParams(enabled=True), list(MEMBERS), work / "data/processed", work / "metrics",
                          work / "models", work / "reports/ensemble", EVAL)


@pytest.mark.slow
def test_the_ensemble_run_records_its_members_in_mlflow(repo):
    import mlflow

    t = json.loads((repo / "metrics/ensemble/train.json").read_text())
    mlflow.set_tracking_uri(yaml.safe_load((repo / "params.yaml").read_text())["train"]["mlflow"]["tracking_uri"])
    run = mlflow.get_run(t["mlflow_run_id"])
    assert run.data.tags["kind"] == "ensemble" and run.data.tags["members"] == "cnn5,cnn8"
    assert run.data.params["ensemble.members"] == "cnn5,cnn8" and "val/macro_recall" in run.data.metrics


@pytest.mark.slow
def test_the_ensemble_writes_a_grad_cam_grid_and_logs_it_with_its_run(repo):
    import mlflow

    png = repo / "reports/ensemble/gradcam.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    t = json.loads((repo / "metrics/ensemble/train.json").read_text())
    mlflow.set_tracking_uri(yaml.safe_load((repo / "params.yaml").read_text())["train"]["mlflow"]["tracking_uri"])
    logged = [f.path for f in mlflow.MlflowClient().list_artifacts(t["mlflow_run_id"], "evaluation")]
    assert "evaluation/gradcam.png" in logged


@pytest.mark.slow
def test_the_ensembles_grid_shows_each_image_with_the_mean_of_its_members_maps(repo, monkeypatch, tmp_path):
    """Whatever order the predictions are in, each picked image is the one of its id, and its map is the mean of the
    members' maps for the ensemble's class."""
    import lungxray.evaluate.gradcam as gradcam
    from lungxray.data.preprocess import load_split
    from lungxray.ensemble.evaluation import _write_gradcam
    from lungxray.models.trained import load_trained_model

    processed = repo / "data/processed"
    table = pd.read_csv(repo / "metrics/ensemble/predictions_test.csv", dtype={"id": str}).sample(frac=1,
                                                                                                  random_state=0)
    probs = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
    y = table.label.map(CLASSES.index).to_numpy()
    seen = {}

    def grid(images, y_true, p, classes, explain, **kw):
        seen["images"], seen["maps"] = images, explain(images[:3], list(p[:3].argmax(1)))
        return gradcam.pyplot().figure()

    monkeypatch.setattr(gradcam, "heatmap_grid", grid)
    _write_gradcam(list(MEMBERS), repo / "models", processed, "test", (y, probs, None), table.id, CLASSES,
                   tmp_path)
    x, _ = load_split(processed, "test")
    rows = pd.read_csv(processed / "index.csv", dtype={"id": str}).query("split == 'test'").set_index("id").row
    assert np.array_equal(seen["images"], x[rows.loc[table.id].to_numpy()])
    own = [gradcam.heatmaps(load_trained_model(repo / f"models/{m}/model.pt"), seen["images"][:3],
                            list(probs[:3].argmax(1))) for m in MEMBERS]
    assert np.allclose(seen["maps"], np.mean(own, axis=0), atol=1e-5)


@pytest.mark.slow
def test_the_leaderboard_ranks_the_ensemble_and_says_what_it_averages(repo):
    out = run_stage_script(repo, "compare.py")
    board = json.loads((repo / "reports/leaderboard.json").read_text())
    assert set(board) == {"cnn5", "cnn8", "ensemble"} and board["ensemble"]["ensemble_of"] == "cnn5, cnn8"
    assert pd.isna(board["cnn5"]["ensemble_of"])  # a single model
    assert "| ensemble (mean of cnn5, cnn8) |" in out


@pytest.mark.slow
def test_a_member_changed_after_its_record_stops_the_stage(repo, tmp_path):
    work = tmp_path / "repo"
    shutil.copytree(repo, work, ignore=shutil.ignore_patterns("mlruns"))
    with open(work / "metrics/cnn8/predictions_val.csv", "a") as f:
        f.write("val/extra,val/u99,normal,1,0,0\n")
    with pytest.raises(LungxrayError, match="cnn8's predictions_val.csv changed since ensemble_member@cnn8"):
        evaluate_ensemble(EnsembleParams(enabled=True), list(MEMBERS), work / "data/processed", work / "metrics",
                          work / "models", work / "reports/ensemble", EVAL)


@pytest.mark.slow
def test_the_ci_gate_checks_the_ensemble_and_refuses_it_when_a_member_model_changed(repo, tmp_path, monkeypatch,
                                                                                   capsys):
    from lungxray.cli.commands import main as cli

    work = tmp_path / "repo"
    shutil.copytree(repo, work, ignore=shutil.ignore_patterns("mlruns"))
    monkeypatch.chdir(work)
    assert cli(["metrics", "baseline"]) == 0
    baseline = json.loads((work / "baseline.json").read_text())
    assert "ensemble.test.accuracy" in baseline and "ensemble.val_set" in baseline
    assert cli(["metrics", "check"]) == 0
    e = json.loads((work / "metrics/ensemble/eval.json").read_text())
    e["test"]["accuracy"] -= 0.5
    (work / "metrics/ensemble/eval.json").write_text(json.dumps(e))
    capsys.readouterr()
    assert cli(["metrics", "check"]) == 1
    assert "ensemble.test.accuracy" in capsys.readouterr().out
    with open(work / "models/cnn8/model.pt", "ab") as f:
        f.write(b"\0")
    assert cli(["metrics", "check"]) == 4
    assert "ensemble: its members or their model.pt changed" in capsys.readouterr().out


@pytest.mark.slow
def test_the_registered_ensemble_predicts_its_members_mean_through_mlflow_pyfunc_and_lungxray_predict(repo,
                                                                                                      monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from lungxray.models.inference import predict_images
    from lungxray.serve.predict import load_predictor

    run_stage_script(repo, "register.py")
    decision = json.loads((repo / "reports/promotion.json").read_text())
    version = next(v["version"] for v in decision["registered_versions"] if v["model"] == "ensemble")
    uri = f"models:/ensemble-cxr/{version}"
    mlflow.set_tracking_uri(yaml.safe_load((repo / "params.yaml").read_text())["train"]["mlflow"]["tracking_uri"])
    tags = MlflowClient().get_model_version("ensemble-cxr", version).tags
    assert tags["model"] == "ensemble" and tags["ensemble_of"] == "cnn5, cnn8"
    x = np.load(repo / "data/processed/test.npy")
    probs = predict_images(uri, x)
    written = pd.read_csv(repo / "metrics/ensemble/predictions_test.csv")[[f"prob_{c}" for c in CLASSES]]
    assert np.allclose(probs, written.to_numpy(), atol=1e-5)
    monkeypatch.chdir(repo)
    predictor = load_predictor(uri, device="cpu")
    assert predictor.names == list(MEMBERS) and predictor.classes == CLASSES


@pytest.mark.slow
def test_each_member_prepares_the_image_its_own_way_and_the_ensemble_averages_them(repo):
    from lungxray.serve.ensemble_model import EnsemblePredictor
    from lungxray.serve.predictor import classify, predictor_from_file

    a = predictor_from_file(repo / "models/cnn5/model.pt", device="cpu")
    b = predictor_from_file(repo / "models/cnn8/model.pt", device="cpu")
    b.image_size, b.mean = 48, [0.5, 0.5, 0.5]  # another input size and normalisation
    images = [np.full((40, 56), 90, np.uint8), np.tile(np.arange(60, dtype=np.uint8), (60, 1)), np.zeros(3)]
    rows = classify(EnsemblePredictor(members=[a, b], names=["a", "b"]), images)
    cols = [f"prob_{c}" for c in CLASSES]
    alone = [pd.DataFrame(classify(p, images[:2]))[cols].to_numpy() for p in (a, b)]
    assert np.allclose(pd.DataFrame(rows[:2])[cols].to_numpy(), (alone[0] + alone[1]) / 2)
    assert rows[2]["predicted"] == "" and "uint8" in rows[2]["error"]


@pytest.mark.slow
def test_the_ensembles_grad_cam_is_the_mean_of_its_members_maps_for_the_ensembles_class(repo, tmp_path):
    from PIL import Image

    from lungxray.evaluate.gradcam import resize_maps
    from lungxray.serve.ensemble_model import EnsemblePredictor
    from lungxray.serve.predict import cam_writer, predict_files
    from lungxray.serve.predictor import classify, predictor_from_file

    a = predictor_from_file(repo / "models/cnn5/model.pt", device="cpu")
    b = predictor_from_file(repo / "models/cnn8/model.pt", device="cpu")
    b.image_size = 48  # the members see the image at different sizes
    ensemble = EnsemblePredictor(members=[a, b], names=["a", "b"])
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 56), dtype=np.uint8), np.zeros(3), np.tile(np.arange(60, dtype=np.uint8),
                                                                                   (60, 1))]
    seen = []
    rows = classify(ensemble, images, ["x", "bad", "y"], seen.append)
    (batch,) = seen
    assert batch.files == ["x", "y"] and batch.images.shape == (2, a.image_size, a.image_size)
    assert [CLASSES[k] for k in batch.predicted] == [rows[0]["predicted"], rows[2]["predicted"]]

    own = []
    for member in (a, b):
        classify(member, [images[0], images[2]], ["x", "y"], own.append)
    expected = (own[0].heatmaps(batch.predicted) + resize_maps(own[1].heatmaps(batch.predicted), a.image_size)) / 2
    assert own[1].images.shape[1] == 48 and np.allclose(batch.heatmaps(), expected, atol=1e-5)

    files = []
    for name, image in (("x.png", images[0]), ("y.png", images[2])):
        Image.fromarray(image).save(tmp_path / name)
        files.append(tmp_path / name)
    table = predict_files(files, ensemble, on_batch=cam_writer(tmp_path / "cams", ensemble, files), progress=False)
    assert (table.error == "").all()
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == ["x.png.png", "y.png.png"]


def test_predict_with_an_ensemble_applies_argmax_and_refuses_other_operating_points_with_a_clear_error():
    from lungxray.serve.ensemble_model import EnsemblePredictor
    from lungxray.serve.predictor import find_operating_point

    ensemble = EnsemblePredictor(members=[], names=["cnn5", "resnet18"])
    assert find_operating_point(ensemble, "argmax")["rule"] == "argmax"  # the default of lungxray predict
    with pytest.raises(LungxrayError, match="only argmax.*--model models/<model>"):
        find_operating_point(ensemble, "pneumonia@sens95")
