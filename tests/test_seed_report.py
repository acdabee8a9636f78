"""benchmarks/seeds/report.py (run as a script): the seed papers' figures beside lungxray's runs of their profiles."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import yaml

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "seeds" / "report.py"


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_with_no_runs_the_table_shows_the_published_figures_and_not_run(tmp_path):
    out = report("--results", str(tmp_path / "none"))
    assert out.returncode == 0, out.stderr
    row = "| seed-000 | efficientnetv2_s | 98.67% | - | not reproducible | not run | not run | not run | - |"
    assert row in out.stdout
    no_skill = "always pneumonia: 62.5% (234 normal / 390 pneumonia)"
    assert f"| seed-004 | resnet34 | 79.5% | {no_skill} | not run | not run | not run | not run | - |" in out.stdout


def test_a_published_figure_that_a_constant_classifier_scores_says_so_beside_the_no_skill_column(tmp_path):
    out = report("--results", str(tmp_path / "none"))
    no_skill = "always pneumonia: 62.5% (234 normal / 390 pneumonia)"
    for profile in ("seed-004", "seed-004-pneumoniamnist"):
        assert f"| {profile} | cnn8 | 37.5% (= always normal) | {no_skill} |" in out.stdout
        assert f"| {profile} | cnn13 | 62.5% (= always pneumonia) | {no_skill} |" in out.stdout
        assert f"| {profile} | resnet34 | 79.5% | {no_skill} |" in out.stdout


def test_a_recorded_run_fills_its_rows_and_a_run_of_another_profile_is_refused(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "configs/seed-004.yaml", params)
    for name, acc in (("cnn8", 0.5), ("cnn13", 0.6), ("resnet34", 0.875)):
        d = tmp_path / "metrics" / name
        d.mkdir(parents=True)
        test = {"accuracy": acc, "accuracy_ci_low": acc - 0.05, "accuracy_ci_high": acc + 0.05, "n_samples": 620}
        (d / "eval.json").write_text(json.dumps({"test": test}))
        (d / "train.json").write_text(json.dumps({"trainable_parameters": 10, "epochs_to_converge": 3}))
    (tmp_path / "external.json").write_text(json.dumps({"summary": {"resnet34": {"mean_macro_recall": 0.61}}}))
    args = ["--params", str(params), "--metrics", str(tmp_path / "metrics"), "--external",
            str(tmp_path / "external.json"), "--results", str(tmp_path / "results")]
    out = report("--record", "seed-004", *args)
    assert out.returncode == 0, out.stderr
    row = "| 87.5% [82.5, 92.5] (n=620) | 87.5% [82.5, 92.5] (n=620) | - | macro recall 0.610 | - |"
    assert "| seed-004 | resnet34 | 79.5% |" in out.stdout and row in out.stdout
    cnn8 = "| seed-004 | cnn8 | 37.5% (= always normal) | always pneumonia: 62.5% (234 normal / 390 pneumonia) | 50.0%"
    assert cnn8 in out.stdout
    assert "| seed-002 | cnn5 | 90% | - | not reproducible | not run | not run | not run | - |" in out.stdout
    refused = report("--record", "seed-003", *args)
    assert refused.returncode != 0 and "is not configs/seed-003.yaml" in refused.stderr


def fake_run(root, models, val, test=None):
    """metrics/<model>/eval.json and train.json as the evaluate and train stages write them (the figures shown)."""
    for name in models:
        d = root / "metrics" / name
        d.mkdir(parents=True)
        (d / "eval.json").write_text(json.dumps({"test": test, "val": val}))
        (d / "train.json").write_text(json.dumps({"trainable_parameters": 320546, "epochs_run": 12,
                                                  "epochs_to_converge": 7, "seconds_per_epoch": 20.5,
                                                  "device": "cpu"}))


def test_a_run_without_the_test_split_fills_val_with_its_lift_and_says_val_only_for_test(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "configs/seed-004-pneumoniamnist.yaml", params)
    base = {"majority_class": "pneumonia", "majority_share": 0.742}
    val = {"accuracy": 0.95, "accuracy_ci_low": 0.93, "accuracy_ci_high": 0.97, "n_samples": 524, "no_skill": base,
           "lift_over_majority": 0.208, "lift_ci_low": 0.19, "lift_ci_high": 0.23, "no_better_than_majority": False}
    flat = {**val, "accuracy": 0.75, "lift_over_majority": 0.008, "no_better_than_majority": True}
    fake_run(tmp_path, ["cnn8", "resnet34"], val)
    fake_run(tmp_path, ["cnn13"], flat)
    args = ["--params", str(params), "--metrics", str(tmp_path / "metrics"), "--external", str(tmp_path / "none"),
            "--results", str(tmp_path / "results")]
    out = report("--record", "seed-004-pneumoniamnist", *args)
    assert out.returncode == 0, out.stderr
    held = "val only: not measured here (test held back)"
    row = (f"| {held} | {held} | 95.0% [93.0, 97.0] (n=524); +20.8 points [+19.0, +23.0] over always pneumonia "
           f"(74.2%) | - | 12 epochs (best 7), 20.5 s/epoch on cpu; 320,546 params |")
    assert "| seed-004-pneumoniamnist | cnn8 | 37.5% (= always normal) |" in out.stdout and row in out.stdout
    assert "(n=524); **no better than always answering pneumonia** (74.2%)" in out.stdout
    full = yaml.safe_load(params.read_text())
    full["fetch"]["sources"][0]["path"] = "pneumoniamnist.npz"  # the full official file: the same profile
    params.write_text(yaml.safe_dump(full))
    assert report("--record", "seed-004-pneumoniamnist", *args).returncode == 0
    full["train"]["epochs"] = 3
    params.write_text(yaml.safe_dump(full))
    assert report("--record", "seed-004-pneumoniamnist", *args).returncode != 0
