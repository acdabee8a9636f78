"""The shortcut check: the source probe against chance, label concentration by source, the warning, and the
leaderboard that carries it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from lungxray.compare.leaderboard import shortcut_block
from lungxray.core.errors import LungxrayError
from lungxray.external.shortcut import ShortcutParams, cramers_v, label_distribution, run_shortcut, shortcut_markdown

from conftest import REPO
from helpers.processed import make_sourced_processed

FAST = ShortcutParams(epochs=3, image_size=32, bootstrap=200, device="cpu")


def test_cramers_v_is_0_for_independent_and_1_for_determined_tables():
    assert cramers_v(np.array([[10, 20], [30, 60]])) == pytest.approx(0.0)
    assert cramers_v(np.array([[25, 0], [0, 40]])) == pytest.approx(1.0)
    assert cramers_v(np.diag([5, 7, 9])) == pytest.approx(1.0)


def test_cramers_v_matches_its_formula_on_a_known_table():
    # chi2 of [[20, 30], [30, 20]]: expected 25 everywhere, 4 cells of 25/25 = 4; V = sqrt(4 / (100 * 1)) = 0.2
    assert cramers_v(np.array([[20, 30], [30, 20]])) == pytest.approx(0.2)
    # a 2 x 3 table: min(r, c) - 1 = 1, so V = sqrt(chi2 / n)
    t = np.array([[10, 0, 10], [0, 20, 0]])
    assert cramers_v(t) == pytest.approx(1.0)


def test_cramers_v_is_undefined_with_one_source_or_one_label():
    assert cramers_v(np.array([[3, 4, 5]])) is None
    assert cramers_v(np.array([[3, 0], [4, 0]])) is None  # an empty column is left out: one label remains


def test_label_distribution_counts_train_and_val_and_names_the_one_label_sources():
    index = pd.DataFrame({"split": ["train", "train", "val", "val", "test"], "source": ["a", "b", "b", "c", "c"],
                          "label": ["normal", "normal", "covid19", "covid19", "normal"]})
    d = label_distribution(index)
    assert d["counts"] == {"a": {"normal": 1}, "b": {"covid19": 1, "normal": 1}, "c": {"covid19": 1}}
    assert d["images"] == 4 and d["single_class_sources"] == {"a": "normal", "c": "covid19"}


@pytest.mark.slow
def test_a_border_that_marks_the_source_makes_the_probe_beat_chance_and_fires_the_warning(tmp_path):
    processed = make_sourced_processed(tmp_path, border=True)
    report = run_shortcut(processed, FAST)
    p, w = report["probe"], report["warning"]
    assert p["majority_rate"] == 0.5 and p["uniform_rate"] == 0.5 and p["sources"] == ["a", "b"]
    assert p["accuracy_ci_low"] >= 0.85 and set(p["per_source"]) == {"a", "b"}
    assert w["fires"] and w["cramers_v"] == pytest.approx(1.0)
    assert report["labels"]["single_class_sources"] == {"a": "normal", "b": "pneumonia"}
    md = shortcut_markdown(report)
    assert "**Shortcut warning**" in md and "a (normal), b (pneumonia)" in md


@pytest.mark.slow
def test_sources_that_look_alike_give_no_warning_even_with_concentrated_labels(tmp_path):
    processed = make_sourced_processed(tmp_path, border=False)
    report = run_shortcut(processed, FAST)
    w = report["warning"]
    assert report["probe"]["accuracy_ci_low"] < 0.5 + FAST.margin
    assert not w["fires"] and w["labels_concentrated"] and not w["source_predictable"]
    assert "No shortcut warning" in shortcut_markdown(report)


def test_one_source_skips_the_probe_without_a_warning(tmp_path):
    processed = make_sourced_processed(tmp_path, border=True)
    index = pd.read_csv(processed / "index.csv")
    index["source"] = "a"
    index.to_csv(processed / "index.csv", index=False)
    report = run_shortcut(processed, FAST)
    assert report["probe"] is None and "1 source" in report["skipped"] and not report["warning"]["fires"]


def test_a_missing_processed_set_is_a_clear_error(tmp_path):
    with pytest.raises(LungxrayError, match="preprocess"):
        run_shortcut(tmp_path / "nowhere", FAST)


def test_an_unknown_probe_model_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="cnn5"):
        ShortcutParams(model="nope")


def test_the_leaderboard_block_quotes_the_warning_only_when_it_fires():
    fired = {"warning": {"fires": True, "message": "**Shortcut warning**: accuracy 99.0%"}}
    assert "**Shortcut warning**: accuracy 99.0%" in shortcut_block(fired)
    assert shortcut_block({"warning": {"fires": False, "message": ""}}) == "" and shortcut_block(None) == ""


@pytest.mark.slow
def test_the_stage_writes_its_reports_and_the_compare_stage_heads_the_leaderboard_with_the_warning(tmp_path):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    make_sourced_processed(work / "data", border=True)
    ml = {"tracking_uri": f"sqlite:///{tmp_path}/mlruns/mlflow.db", "artifact_dir": str(tmp_path / "mlruns/art")}
    params = {"shortcut": {"epochs": 3, "image_size": 32, "bootstrap": 200, "device": "cpu"},
              "train": {"models": ["cnn5"], "mlflow": ml}, "promote": {}}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, str(REPO / "stages/shortcut.py")], cwd=work, capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert "Shortcut warning" in r.stdout
    report = json.loads((work / "reports/shortcut.json").read_text())
    assert report["warning"]["fires"] and report["mlflow_run_id"]
    assert (work / "reports/shortcut.png").stat().st_size > 0 and (work / "reports/shortcut.md").exists()
    (work / "metrics/cnn5").mkdir(parents=True)  # a trained, evaluated model as compare reads it
    (work / "metrics/cnn5/train.json").write_text(json.dumps({"trainable_parameters": 10, "seconds_per_epoch": 1.0,
                                                              "epochs_to_converge": 1}))
    split = {"macro_recall": 0.9, "accuracy": 0.9, "macro_auc": 0.9}
    (work / "metrics/cnn5/eval.json").write_text(json.dumps({"test": split, "val": split, "test_set": "t",
                                                             "throughput": {"images_per_s": 5.0}}))
    r = subprocess.run([sys.executable, str(REPO / "stages/compare.py")], cwd=work, capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    board = (work / "reports/leaderboard.md").read_text()
    assert board.index("Shortcut warning") < board.index("| # | model")
    assert f"{100 * report['probe']['accuracy']:.1f}%" in board


def test_mlflow_logs_one_run_tagged_as_the_shortcut_check(tmp_path):
    from lungxray.core.tracking import MlflowParams, log_shortcut_check, mlflow_setup

    report = {"skipped": None, "probe": {"accuracy": 0.9, "accuracy_ci_low": 0.8, "accuracy_ci_high": 0.95,
                                         "majority_rate": 0.5, "uniform_rate": 0.5},
              "labels": {"cramers_v": 0.7}, "warning": {"fires": True}, "params": FAST.model_dump(mode="json")}
    (tmp_path / "shortcut.md").write_text("x")
    mp = MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_dir=str(tmp_path / "art"))
    run_id = log_shortcut_check(report, [tmp_path / "shortcut.md"], mp)
    run = mlflow_setup(mp).get_run(run_id)
    assert run.data.tags["stage"] == "shortcut" and run.data.tags["shortcut_warning"] == "true"
    assert run.data.metrics["probe/accuracy"] == 0.9 and run.data.metrics["labels/cramers_v"] == 0.7
