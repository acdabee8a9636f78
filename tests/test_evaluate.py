"""Evaluate, compare, register/promote and the CI gate, wired together on a tiny trained pair of models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from lungxray.cli.commands import main as cli
from lungxray.compare.leaderboard import leaderboard, leaderboard_rows
from lungxray.compare.promote import PromotionParams
from lungxray.core.errors import LungxrayError
from lungxray.core.tracking import MlflowParams
from lungxray.evaluate.evaluation import EvaluateParams, evaluate_model, fingerprint_split
from lungxray.models.inference import predict_images
from lungxray.registry.register import register_and_promote
from lungxray.train.fit import train_model

from conftest import REPO
from helpers.processed import make_processed, train_params
from helpers.stages import run_stage_script

EVAL = EvaluateParams(bootstrap=200, latency_batches=2, batch_size=16)


def with_units(processed: Path) -> Path:
    """Give the index the split unit preprocess writes: here two images per unit (a patient's pair)."""
    import pandas as pd

    index = pd.read_csv(processed / "index.csv")
    index["unit"] = index.split + "/u" + (index.row // 2).astype(str)
    index.to_csv(processed / "index.csv", index=False)
    return processed


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """cnn5 and cnn8, one epoch each, evaluated; metrics laid out as the pipeline does (metrics/<m>/...)."""
    import os

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("eval")
    processed = with_units(make_processed(root, n_train=48, n_val=24, size=32))
    ml = MlflowParams(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db", artifact_dir=str(root / "mlruns/art"))
    out = {}
    for name in ("cnn5", "cnn8"):
        tp = train_params(root, models=["cnn5", "cnn8"], epochs=1, mlflow=ml)
        t = train_model(name, tp, processed, root / "models" / name, root / "metrics" / name, progress=False)
        out[name] = evaluate_model(name, processed, root / "models" / name / "model.pt", root / "metrics" / name,
                                   root / "reports" / name, EVAL, t, ml)
    return root, processed, ml, out


def test_the_headline_files_hold_exactly_the_headline_figures_of_their_split(trained):
    root, _, _, out = trained
    for split in ("val", "test"):
        headline = json.loads((root / f"metrics/cnn5/headline_{split}.json").read_text())
        assert set(headline) == {"accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_recall",
                                 "macro_recall_ci_low", "macro_recall_ci_high", "macro_auc", "macro_auc_ci_low",
                                 "macro_auc_ci_high", "ece"}
        assert headline == {k: out["cnn5"][split][k] for k in headline}


def test_eval_outputs(trained):
    root, processed, _, out = trained
    e = json.loads((root / "metrics/cnn5/eval.json").read_text())
    assert e == json.loads(json.dumps(out["cnn5"]))
    for key in ("accuracy", "macro_recall", "macro_auc", "accuracy_ci_low", "ece"):
        assert key in e["test"] and key in e["val"]
    assert e["test"]["per_class"]["normal"]["specificity"] is not None
    assert e["test"]["by_source"]["synthetic"]["n_samples"] == 6
    assert e["throughput"]["images_per_s"] > 0
    from lungxray.registry.register import load_predictions

    assert e["test_set"] == fingerprint_split(processed, "test") and e["val_set"] == fingerprint_split(processed, "val")
    assert e["val_set"] != e["test_set"]
    assert set(e["inputs"]) == {"data_version", "model_sha256", "evaluate_params"}
    assert e["val"]["bootstrap"]["resampled"] == "split units" and e["val"]["bootstrap"]["units"] == 12
    val = load_predictions(["cnn5"], root / "metrics", "val")["cnn5"]
    assert val.columns.tolist() == ["id", "unit", "label", "prob_normal", "prob_pneumonia", "prob_covid19"]
    assert val.id.tolist() == [f"val/{i}" for i in range(24)] and val.unit.tolist()[:3] == ["val/u0", "val/u0",
                                                                                            "val/u1"]
    assert np.allclose(val.filter(like="prob_").sum(axis=1), 1)
    assert len(load_predictions(["cnn5"], root / "metrics", "test")["cnn5"]) == 6
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
    assert {"evaluation/predictions_val.csv", "evaluation/predictions_test.csv"} <= arts
    assert run.data.tags["val_set"] == out["cnn5"]["val_set"]


def test_evaluate_writes_a_gradcam_grid_png_and_logs_it_with_the_training_run(trained):
    import mlflow
    from PIL import Image

    root, _, ml, _ = trained
    with Image.open(root / "reports/cnn5/gradcam.png") as im:
        im.load()
        assert im.format == "PNG" and im.width > 400 and im.height > 400  # a grid: 3 classes x 4 picks
    mlflow.set_tracking_uri(ml.tracking_uri)
    run_id = json.loads((root / "metrics/cnn5/train.json").read_text())["mlflow_run_id"]
    assert "evaluation/gradcam.png" in {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "evaluation")}


def test_leaderboard(trained):
    root, *_ = trained
    rows = leaderboard_rows(["cnn5", "cnn8"], root / "metrics")
    df, md = leaderboard(rows)
    assert set(df.model) == {"cnn5", "cnn8"}
    best = max(rows, key=lambda r: (r["val_macro_recall"], -r["trainable_parameters"]))
    assert df.iloc[0].model == best["model"]  # row 1 is what the promotion rule picks
    table = md.split("\n\n", 1)[1]
    assert "val macro recall" in table and best["model"] in table.splitlines()[2]
    with pytest.raises(LungxrayError, match="no metrics for vgg16"):
        leaderboard_rows(["vgg16"], root / "metrics")


def test_register_promote_and_load_champion(trained):
    import mlflow

    from lungxray.registry.register import load_predictions

    root, processed, ml, _ = trained
    rows = leaderboard_rows(["cnn5", "cnn8"], root / "metrics")
    preds = load_predictions(["cnn5", "cnn8"], root / "metrics", "val")
    p = PromotionParams(registered_model="test-cxr", min_improvement=0.005, bootstrap=200)
    first = register_and_promote(rows, p, ml, preds, root / "models")
    assert first["promote"] is True and "no current champion" in first["reason"].lower()
    client = mlflow.MlflowClient()
    champ = client.get_model_version_by_alias("test-cxr", "champion")
    assert champ.version == first["champion_after"]["version"]
    assert champ.tags["model"] == first["best"]["model"] and "val_macro_recall" in champ.tags
    assert champ.tags["val_set"] == rows[0]["val_set"] and champ.tags["predictions_val"].startswith("runs:/")
    chal = client.get_model_version_by_alias("test-cxr", "challenger")
    assert chal.version != champ.version

    # the same models again: the same versions (one per run and model), the best is the champion already
    second = register_and_promote(rows, p, ml, preds, root / "models")
    assert second["registered_versions"] == first["registered_versions"]
    assert second["compared"]["method"] == "already_champion" and second["promote"] is False
    assert client.get_model_version_by_alias("test-cxr", "champion").version == champ.version
    assert client.get_model_version_by_alias("test-cxr", "challenger").version == chal.version
    assert len(client.search_model_versions("name='test-cxr'")) == 2
    json.dumps(second, allow_nan=False)

    x = np.load(processed / "test.npy")
    probs = predict_images("models:/test-cxr@champion", x)
    assert probs.shape == (len(x), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)


def registry_versions(name: str) -> list[tuple[str, str]]:
    """(run id, model tag) of every version of the registered model ``name``."""
    import mlflow

    return sorted((v.run_id, v.tags.get("model")) for v in mlflow.MlflowClient().search_model_versions(
        f"name='{name}'"))


def test_kill_9_during_register_then_reruns_keep_one_version_per_run_and_model(trained):
    """Registration is idempotent: a rerun finds the versions an earlier run registered (the killed one's included)
    and reuses them, so the registry holds one version per (run, model) and no alias points at a copy of the
    champion."""
    import os
    import signal
    import subprocess
    import sys

    import mlflow

    from lungxray.registry.register import load_predictions

    root, _, ml, _ = trained
    name = "kill-cxr"
    p = PromotionParams(registered_model=name, bootstrap=50)
    call = (f"register_and_promote(leaderboard_rows(['cnn5', 'cnn8'], Path({str(root / 'metrics')!r})), "
            f"PromotionParams.model_validate_json({p.model_dump_json()!r}), "
            f"MlflowParams.model_validate_json({ml.model_dump_json()!r}), "
            f"load_predictions(['cnn5', 'cnn8'], Path({str(root / 'metrics')!r}), 'val'), "
            f"Path({str(root / 'models')!r}))")
    killer = f"""
import os, signal
from pathlib import Path
import lungxray.registry.register as R
from lungxray.compare.leaderboard import leaderboard_rows
from lungxray.compare.promote import PromotionParams
from lungxray.registry.register import load_predictions, register_and_promote
from lungxray.core.tracking import MlflowParams
real = R.wait_ready
def wait_ready(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # killed once the first model's version is registered
R.wait_ready = wait_ready
{call}
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    assert subprocess.run([sys.executable, "-c", killer], env=env).returncode == -signal.SIGKILL
    mlflow.set_tracking_uri(ml.tracking_uri)
    client = mlflow.MlflowClient()
    assert len(registry_versions(name)) == 1  # the killed run's leftover: cnn5's version, no alias

    rows = leaderboard_rows(["cnn5", "cnn8"], root / "metrics")
    runs = sorted((r["mlflow_run_id"], r["model"]) for r in rows)
    preds = load_predictions(["cnn5", "cnn8"], root / "metrics", "val")
    first = register_and_promote(rows, p, ml, preds, root / "models")
    assert registry_versions(name) == runs  # the leftover was reused, not registered again
    champion = client.get_model_version_by_alias(name, "champion")
    challenger = client.get_model_version_by_alias(name, "challenger")
    assert champion.version == first["champion_after"]["version"] and champion.run_id != challenger.run_id

    subprocess.run([sys.executable, "-c", killer], env=env)  # killed again, after a champion exists
    again = register_and_promote(rows, p, ml, preds, root / "models")
    assert registry_versions(name) == runs
    assert again["registered_versions"] == first["registered_versions"]
    assert again["compared"]["method"] == "already_champion" and not again["promote"]
    assert client.get_model_version_by_alias(name, "champion").version == champion.version
    assert client.get_model_version_by_alias(name, "challenger").version == challenger.version


def test_register_stage_pairs_the_challenger_with_the_champion_on_val(trained, tmp_path, monkeypatch):
    """The stage wiring: promotion.json records the paired difference and its interval (champion from MLflow)."""
    from lungxray.compare.promote import rank
    from lungxray.registry.register import load_predictions

    root, _, ml, _ = trained
    work = workdir(root, tmp_path)  # register logs each model from its model.pt
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"]["mlflow"] = {"tracking_uri": ml.tracking_uri, "artifact_dir": ml.artifact_dir}
    params["promote"].update(registered_model="stage-cxr", bootstrap=100)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    rows = leaderboard_rows(["cnn5", "cnn8"], root / "metrics")
    best, second = rank(rows, PromotionParams())
    first = register_and_promote([second], PromotionParams(registered_model="stage-cxr"), ml,
                                 load_predictions([second["model"]], root / "metrics", "val"), root / "models")
    assert first["promote"] and first["champion_after"]["model"] == second["model"]
    out = run_stage_script(work, "register.py")
    decision = json.loads((work / "reports/promotion.json").read_text())
    c = decision["compared"]  # the best against the champion, whose val predictions come back from MLflow
    assert c["method"] == "paired_bootstrap" and c["units"] == 12 and c["images"] == 24
    assert c["difference"] == pytest.approx(best["val_macro_recall"] - second["val_macro_recall"])
    assert c["difference_ci_low"] <= c["difference"] <= c["difference_ci_high"]
    assert decision["params"]["metric"] == "val_macro_recall" and "paired difference" in out
    assert "#/experiments/" in out and "workflowType=machine_learning" in out  # the UI's address of the runs
    versions = {v["model"]: v["version"] for v in decision["registered_versions"]}
    assert versions[second["model"]] == first["registered_versions"][0]["version"]  # the champion's own, reused


def test_compare_orders_by_the_configured_tie_breaker(trained, tmp_path):
    root, *_ = trained
    work = workdir(root, tmp_path, models=False)
    for m, secs in (("cnn5", 10.0), ("cnn8", 50.0)):  # same scores; cnn5 is bigger but faster
        e = json.loads((work / f"metrics/{m}/eval.json").read_text())
        e["val"]["macro_recall"] = e["test"]["macro_recall"] = 0.8
        (work / f"metrics/{m}/eval.json").write_text(json.dumps(e))
        t = json.loads((work / f"metrics/{m}/train.json").read_text())
        t["seconds_per_epoch"] = secs
        (work / f"metrics/{m}/train.json").write_text(json.dumps(t))
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["promote"]["tie_breaker"] = "seconds_per_epoch"
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage_script(work, "compare.py")
    board = json.loads((work / "reports/leaderboard.json").read_text())
    assert board["cnn5"]["trainable_parameters"] > board["cnn8"]["trainable_parameters"]
    assert board["cnn5"]["rank"] == 1 and board["cnn8"]["rank"] == 2
    md = (work / "reports/leaderboard.md").read_text()
    assert "Ranked by `val_macro_recall`" in md and "fewer `seconds_per_epoch`" in md and "not used for selection" in md


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
    from helpers.httpserver import free_port

    root, *_ = trained
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the environment's store would win over params
    rows = leaderboard_rows(["cnn5", "cnn8"], root / "metrics")
    dead = MlflowParams(tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(LungxrayError, match="MLflow"):
        register_and_promote(rows, PromotionParams(registered_model="x"), dead, models_root=root / "models")


def workdir(root: Path, tmp_path: Path, models: bool = True) -> Path:
    """A scratch repository with the trained pair's metrics (and processed data and models) where the pipeline
    keeps them, and the shared-data profile restricted to cnn5 and cnn8."""
    work = tmp_path / "repo"
    (work / "metrics").mkdir(parents=True)
    for m in ("cnn5", "cnn8"):
        shutil.copytree(root / "metrics" / m, work / "metrics" / m)
        if models:
            shutil.copytree(root / "models" / m, work / "models" / m)
    if models:
        shutil.copytree(root / "processed", work / "data" / "processed")
    params = yaml.safe_load((REPO / "configs" / "shared-data.yaml").read_text())
    params["train"]["models"] = ["cnn5", "cnn8"]
    params["ensemble"] = {"enabled": False}  # the pair alone (tests/test_ensemble.py adds the ensemble)
    params["gate"]["baseline"] = "baseline.json"
    params["evaluate"] = EVAL.model_dump()
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    return work


def test_ci_gate_fails_on_a_degraded_run(trained, tmp_path, monkeypatch, capsys):
    root, *_ = trained
    work = workdir(root, tmp_path)
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


def test_ci_gate_refuses_metrics_measured_on_other_images(trained, tmp_path, monkeypatch, capsys):
    root, *_ = trained
    work = workdir(root, tmp_path)
    monkeypatch.chdir(work)
    assert cli(["metrics", "baseline"]) == 0
    baseline = json.loads((work / "baseline.json").read_text())
    assert baseline["cnn5.test_set"] == fingerprint_split(root / "processed", "test")
    assert baseline["cnn8.val_set"] == json.loads((work / "metrics/cnn8/eval.json").read_text())["val_set"]
    capsys.readouterr()

    # the baseline was measured on another test set: identical numbers prove nothing, worse ones neither
    (work / "baseline.json").write_text(json.dumps({**baseline, "cnn8.test_set": "0123456789abcdef"}))
    assert cli(["metrics", "check"]) == 3
    out = capsys.readouterr().out
    assert "REFUSED" in out and "cnn8.test_set: baseline 0123456789abcdef" in out
    assert "PASSED" not in out and "REGRESSION" not in out

    # a baseline written before fingerprints were recorded cannot vouch for its images either
    (work / "baseline.json").write_text(json.dumps({k: v for k, v in baseline.items() if not isinstance(v, str)}))
    assert cli(["metrics", "check"]) == 3
    assert "(no fingerprint recorded)" in capsys.readouterr().out


def test_ci_gate_refuses_metrics_older_than_their_inputs(trained, tmp_path, monkeypatch, capsys):
    root, *_ = trained
    work = workdir(root, tmp_path)
    monkeypatch.chdir(work)
    assert cli(["metrics", "baseline"]) == 0
    capsys.readouterr()

    # an interrupted rerun on other data: data/processed is new, the eval.json files are the old run's
    stats = json.loads((work / "data/processed/stats.json").read_text())
    stats["mean"] = 0.41
    (work / "data/processed/stats.json").write_text(json.dumps(stats))
    assert cli(["metrics", "check"]) == 4
    out = capsys.readouterr().out
    assert "REFUSED" in out and "cnn5:" in out and "cnn8:" in out and "dvc repro" in out
    assert "data/processed changed" in out and "PASSED" not in out
    assert cli(["metrics", "baseline"]) == 4  # and no baseline is written from them
    capsys.readouterr()

    # only cnn8 was retrained after its evaluation
    shutil.copytree(root / "processed", work / "data/processed", dirs_exist_ok=True)
    with open(work / "models/cnn8/model.pt", "ab") as f:
        f.write(b"\0")
    assert cli(["metrics", "check"]) == 4
    out = capsys.readouterr().out
    assert "cnn8: its model.pt changed" in out and "cnn5:" not in out

    # an eval.json from before inputs were recorded
    shutil.copy2(root / "models/cnn8/model.pt", work / "models/cnn8/model.pt")
    e = json.loads((work / "metrics/cnn5/eval.json").read_text())
    del e["inputs"]
    (work / "metrics/cnn5/eval.json").write_text(json.dumps(e))
    assert cli(["metrics", "check"]) == 4
    assert "cnn5: eval.json records no inputs" in capsys.readouterr().out


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


def test_benchmark_mode_reports_the_official_test_set_beside_the_deduplicated_test(trained, tmp_path):
    import pandas as pd

    root, processed, ml, _ = trained
    bench = tmp_path / "processed"
    shutil.copytree(processed, bench)
    index = pd.read_csv(bench / "index.csv")
    test = index[index.split == "test"]
    copies = pd.concat([test, test.iloc[:2]], ignore_index=True)  # the test set with two copies within it
    copies = copies.assign(split="test_official", row=range(len(copies)))
    pd.concat([index, copies], ignore_index=True).to_csv(bench / "index.csv", index=False)
    x = np.load(bench / "test.npy")
    np.save(bench / "test_official.npy", np.concatenate([x, x[:2]]))
    t = train_model("cnn5", train_params(tmp_path, epochs=1, mlflow=ml), bench, tmp_path / "m", tmp_path / "x",
                    progress=False)
    out = evaluate_model("cnn5", bench, tmp_path / "m/model.pt", tmp_path / "x", tmp_path / "r", EVAL, t, ml)
    assert out["test_official"]["n_samples"] == len(x) + 2 and out["test"]["n_samples"] == len(x)
    assert "test_official" not in trained[3]["cnn5"]  # absent outside benchmark mode
    # its per-image predictions (the ensemble averages them); outside benchmark mode, a table without rows
    assert len(pd.read_csv(tmp_path / "x/predictions_test_official.csv")) == len(x) + 2
    none = pd.read_csv(root / "metrics/cnn5/predictions_test_official.csv")
    assert none.empty and list(none.columns) == list(pd.read_csv(root / "metrics/cnn5/predictions_test.csv").columns)


def test_eval_json_and_the_summary_line_carry_the_no_skill_line_of_every_split(trained):
    from lungxray.evaluate.extras import summary_line

    root, _, _, out = trained
    e = json.loads((root / "metrics/cnn5/eval.json").read_text())
    for split in ("val", "test"):
        base = e[split]["no_skill"]
        assert set(base["prevalence"]) == {"normal", "pneumonia", "covid19"} and base["macro_auc"] == 0.5
        assert e[split]["lift_over_majority"] == pytest.approx(e[split]["accuracy"] - base["majority_share"])
        assert isinstance(e[split]["no_better_than_majority"], bool)
    assert "always " in summary_line("evaluate cnn5", out["cnn5"]) or "no better than" in summary_line(
        "evaluate cnn5", out["cnn5"])
    assert "No-skill line" in (root / "reports/cnn5/evaluation.md").read_text()


def test_a_constant_model_on_a_skewed_test_set_is_flagged_in_the_summary_and_on_the_leaderboard(tmp_path):
    """234 normal and 390 pneumonia (the seed-004 test folder): always answering pneumonia scores 62.5%."""
    import pandas as pd

    from lungxray.evaluate.evaluation import score_split
    from lungxray.evaluate.extras import summary_line

    classes = ["normal", "pneumonia"]
    y = np.array([0] * 234 + [1] * 390)
    constant = np.tile([0.2, 0.8], (len(y), 1))  # the same answer for every image
    part = pd.DataFrame({"unit": [f"u{i // 2}" for i in range(len(y))], "source": "kermany"})
    params = EvaluateParams(bootstrap=200)
    _, test = score_split(y, constant, part, classes, params)
    assert test["accuracy"] == 0.625 and test["no_better_than_majority"] is True
    assert test["no_skill"]["majority_class"] == "pneumonia" and test["lift_over_majority"] == 0
    out = {"test": test, "throughput": {"images_per_s": 1.0}}
    assert "WARNING: no better than always answering pneumonia (62.5% of the images)" in summary_line("m", out)
    d = tmp_path / "metrics/constant"
    d.mkdir(parents=True)
    (d / "eval.json").write_text(json.dumps({**out, "val": test, "test_set": "t", "val_set": "v"}))
    (d / "train.json").write_text(json.dumps({"trainable_parameters": 1, "seconds_per_epoch": 1.0,
                                              "epochs_to_converge": 1}))
    _, md = leaderboard(leaderboard_rows(["constant"], tmp_path / "metrics"))
    assert "**test: no better than always answering pneumonia (62.5% of the images)**" in md
