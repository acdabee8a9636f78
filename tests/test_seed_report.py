"""benchmarks/seeds/report.py (run as a script): the seed papers' figures beside lungxray's runs of their profiles."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "seeds" / "report.py"


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_with_no_runs_the_table_shows_the_published_figures_and_not_run(tmp_path):
    out = report("--results", str(tmp_path / "none"))
    assert out.returncode == 0, out.stderr
    assert "| seed-000 | efficientnetv2_s | 98.67% | not reproducible | not run | not run |" in out.stdout
    assert "| seed-004 | resnet34 | 79.5% | not run | not run | not run |" in out.stdout


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
    row = "| seed-004 | resnet34 | 79.5% | 87.5% [82.5, 92.5] (n=620) | 87.5% [82.5, 92.5] (n=620) | macro recall 0.610 |"
    assert row in out.stdout and "| seed-004 | cnn8 | 37.5% | 50.0%" in out.stdout
    assert "| seed-002 | cnn5 | 90% | not reproducible | not run | not run |" in out.stdout
    refused = report("--record", "seed-003", *args)
    assert refused.returncode != 0 and "is not configs/seed-003.yaml" in refused.stderr
