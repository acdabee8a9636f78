"""Evaluate, compare, register/promote and the CI gate, wired together on a tiny trained pair of models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from lungxray.cli import main as cli
from lungxray.errors import LungxrayError
from lungxray.evaluate import EvaluateParams, leaderboard
from lungxray.evaluation import (evaluate_model, leaderboard_rows, predict_images, register_and_promote,
                                 fingerprint_test_set)
from lungxray.promote import PromotionParams
from lungxray.train import MlflowParams, train_model

from conftest import REPO
from test_train import make_processed, params as train_params

EVAL = EvaluateParams(bootstrap=200, latency_batches=2, batch_size=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """cnn5 and cnn8, one epoch each, evaluated; metrics laid out as the pipeline does (metrics/<m>/...)."""
    import os

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("eval")
    processed = make_processed(root, n_train=48, n_val=24, size=32)
    ml = MlflowParams(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db", artifact_dir=str(root / "mlruns/art"))
    out = {}
    for name in ("cnn5", "cnn8"):
        tp = train_params(root, models=["cnn5", "cnn8"], epochs=1, mlflow=ml)
        t = train_model(name, tp, processed, root / "models" / name, root / "metrics" / name, progress=False)
        out[name] = evaluate_model(name, processed, root / "models" / name / "model.pt", root / "metrics" / name,
                                   root / "reports" / name, EVAL, t, ml)
    return root, processed, ml, out


def test_eval_outputs(trained):
    root, processed, _, out = trained
    e = json.loads((root / "metrics/cnn5/eval.json").read_text())
    assert e == json.loads(json.dumps(out["cnn5"]))
    for key in ("accuracy", "macro_recall", "macro_auc", "accuracy_ci_low", "ece"):
        assert key in e["test"] and key in e["val"]
    assert e["test"]["per_class"]["normal"]["specificity"] is not None
    assert e["test"]["by_source"]["synthetic"]["n_samples"] == 6
    assert e["throughput"]["images_per_s"] > 0
    assert e["test_set"] == fingerprint_test_set(processed)
    for f in ("confusion_matrix.png", "roc.png", "reliability.png", "classification_report.txt"):
        assert (root / "reports/cnn5" / f).stat().st_size > 0
    assert (root / "metrics/cnn5/roc.csv").exists() and (root / "metrics/cnn5/confusion.csv").exists()


def test_eval_is_logged_to_the_training_run(trained):
    import mlflow

    root, _, ml, out = trained
    mlflow.set_tracking_uri(ml.tracking_uri)
    train = json.loads((root / "metrics/cnn5/train.json").read_text())
    run = mlflow.get_run(train["mlflow_run_id"])
    assert run.data.metrics["test/accuracy"] == pytest.approx(out["cnn5"]["test"]["accuracy"])
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in arts


def test_leaderboard(trained):
    root, *_ = trained
    rows = leaderboard_rows(["cnn5", "cnn8"], root / "metrics")
    df, md = leaderboard(rows)
    assert set(df.model) == {"cnn5", "cnn8"}
    best = max(rows, key=lambda r: (r["test_macro_recall"], -r["trainable_parameters"]))
    assert df.iloc[0].model == best["model"]  # row 1 is what the promotion rule picks
    assert "macro recall" in md and best["model"] in md.splitlines()[2]
    with pytest.raises(LungxrayError, match="no metrics for vgg16"):
        leaderboard_rows(["vgg16"], root / "metrics")


def test_register_promote_and_load_champion(trained):
    import mlflow

    root, processed, ml, _ = trained
    rows = leaderboard_rows(["cnn5", "cnn8"], root / "metrics")
    p = PromotionParams(registered_model="test-cxr", min_improvement=0.005)
    first = register_and_promote(rows, p, ml)
    assert first["promote"] is True and "no current champion" in first["reason"].lower()
    client = mlflow.MlflowClient()
    champ = client.get_model_version_by_alias("test-cxr", "champion")
    assert champ.version == first["champion_after"]["version"]
    assert champ.tags["model"] == first["best"]["model"] and "test_macro_recall" in champ.tags
    chal = client.get_model_version_by_alias("test-cxr", "challenger")
    assert chal.version != champ.version

    # the same models again: new versions, but nothing beats the champion by the margin -> champion stays
    second = register_and_promote(rows, p, ml)
    assert second["promote"] is False and "margin" in second["reason"]
    assert client.get_model_version_by_alias("test-cxr", "champion").version == champ.version
    assert len(second["registered_versions"]) == 2

    x = np.load(processed / "test.npy")
    probs = predict_images("models:/test-cxr@champion", x, 0.4, 0.2)
    assert probs.shape == (len(x), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_stale_model_is_refused(trained, tmp_path):
    root, processed, ml, _ = trained
    changed = tmp_path / "processed"
    shutil.copytree(processed, changed)
    stats = json.loads((changed / "stats.json").read_text())
    stats["mean"] = 0.41
    (changed / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(LungxrayError, match="stale"):
        evaluate_model("cnn5", changed, root / "models/cnn5/model.pt", tmp_path / "m", tmp_path / "r", EVAL)


def test_missing_model_is_a_clear_error(tmp_path, trained):
    _, processed, *_ = trained
    with pytest.raises(LungxrayError, match="no trained model"):
        evaluate_model("cnn5", processed, tmp_path / "nope/model.pt", tmp_path / "m", tmp_path / "r", EVAL)


def test_unreachable_mlflow_store(trained, monkeypatch):
    from httpserver import free_port

    root, *_ = trained
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    rows = leaderboard_rows(["cnn5", "cnn8"], root / "metrics")
    dead = MlflowParams(tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(LungxrayError, match="MLflow"):
        register_and_promote(rows, PromotionParams(registered_model="x"), dead)


def test_ci_gate_fails_on_a_degraded_run(trained, tmp_path, monkeypatch, capsys):
    root, *_ = trained
    work = tmp_path / "repo"
    (work / "metrics").mkdir(parents=True)
    for m in ("cnn5", "cnn8"):
        shutil.copytree(root / "metrics" / m, work / "metrics" / m)
    params = yaml.safe_load((REPO / "configs" / "shared-data.yaml").read_text())
    params["train"]["models"] = ["cnn5", "cnn8"]
    params["gate"]["baseline"] = "baseline.json"
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(work)
    assert cli(["metrics", "baseline"]) == 0
    assert cli(["metrics", "check"]) == 0
    assert "PASSED" in capsys.readouterr().out

    # a deliberately degraded run: cnn8 loses 0.2 of test accuracy
    e = json.loads((work / "metrics/cnn8/eval.json").read_text())
    e["test"]["accuracy"] -= 0.2
    (work / "metrics/cnn8/eval.json").write_text(json.dumps(e))
    assert cli(["metrics", "check"]) == 1
    out = capsys.readouterr().out
    assert "cnn8.test.accuracy" in out and "REGRESSION" in out and "FAILED" in out

    # a metric that disappeared is a failure too
    (work / "metrics/cnn8/eval.json").unlink()
    assert cli(["metrics", "check"]) == 2


def test_held_back_test_split_reports_val_only(trained, tmp_path):
    root, processed, ml, _ = trained
    held = tmp_path / "processed"
    shutil.copytree(processed, held)
    np.save(held / "test.npy", np.zeros((0, 32, 32), np.uint8))
    import pandas as pd

    index = pd.read_csv(held / "index.csv")
    index[index.split != "test"].to_csv(held / "index.csv", index=False)
    # same data version is required: re-train-free check by copying the model's recorded version is not possible,
    # so evaluate a model trained on this very folder
    t = train_model("cnn5", train_params(tmp_path, epochs=1, mlflow=ml), held, tmp_path / "m", tmp_path / "x",
                    progress=False)
    with pytest.raises(LungxrayError, match="test split is empty"):
        evaluate_model("cnn5", held, tmp_path / "m/model.pt", tmp_path / "x", tmp_path / "r", EVAL, t, ml)
    out = evaluate_model("cnn5", held, tmp_path / "m/model.pt", tmp_path / "x", tmp_path / "r",
                         EvaluateParams(bootstrap=50, latency_batches=1, allow_empty_test=True), t, ml)
    assert out["test"] is None and out["val"]["n_samples"] == 24 and out["plots_split"] == "val"
    assert (tmp_path / "r/confusion_matrix.png").exists() and (tmp_path / "x/roc.csv").exists()
