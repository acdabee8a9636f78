from __future__ import annotations

import json

import pytest

from lungxray.compare.gate import GateParams, check, collect_metrics, format_table, load_baseline, write_baseline

BASE = {"cnn5.test.accuracy": 0.90, "cnn5.test.macro_recall": 0.88, "cnn5.test.ece": 0.05,
        "resnet18.test.accuracy": 0.93}
P = GateParams(tolerances={"*.test.accuracy": 0.02, "cnn5.test.macro_recall": 0.01, "cnn5.test.ece": 0.01})


def verdicts(rows):
    return {r["metric"]: r["verdict"] for r in rows}


def test_identical_run_passes():
    rows, ok = check(BASE, BASE, P)
    assert ok and set(verdicts(rows).values()) == {"ok"} and len(rows) == 4


def test_degraded_run_fails():
    cur = {**BASE, "cnn5.test.accuracy": 0.85}
    rows, ok = check(cur, BASE, P)
    assert not ok and verdicts(rows)["cnn5.test.accuracy"] == "REGRESSION"
    r = next(r for r in rows if r["metric"] == "cnn5.test.accuracy")
    assert r["change"] == pytest.approx(-0.05) and r["tolerance"] == 0.02 and r["baseline"] == 0.90


def test_within_tolerance_and_exactly_at_tolerance_pass():
    rows, ok = check({**BASE, "cnn5.test.accuracy": 0.885, "cnn5.test.macro_recall": 0.87}, BASE, P)
    assert ok and verdicts(rows)["cnn5.test.accuracy"] == "ok" and verdicts(rows)["cnn5.test.macro_recall"] == "ok"


def test_improvements_pass():
    rows, ok = check({**BASE, "cnn5.test.accuracy": 0.95, "cnn5.test.ece": 0.02}, BASE, P)
    assert ok and verdicts(rows)["cnn5.test.accuracy"] == "improved" and verdicts(rows)["cnn5.test.ece"] == "improved"


def test_missing_metric_fails():
    cur = {k: v for k, v in BASE.items() if k != "resnet18.test.accuracy"}
    rows, ok = check(cur, BASE, P)
    assert not ok and verdicts(rows)["resnet18.test.accuracy"] == "missing"
    rows, ok = check({**BASE, "resnet18.test.accuracy": float("nan")}, BASE, P)
    assert not ok and verdicts(rows)["resnet18.test.accuracy"] == "missing"


def test_tolerance_naming_an_absent_metric_fails():
    p = GateParams(tolerances={"cnn5.test.acuracy": 0.01})  # typo
    rows, ok = check(BASE, BASE, p)
    assert not ok and verdicts(rows) == {"cnn5.test.acuracy": "missing"}


def test_lower_is_better():
    rows, ok = check({**BASE, "cnn5.test.ece": 0.08}, BASE, P)  # calibration got worse by 0.03 > 0.01
    assert not ok and verdicts(rows)["cnn5.test.ece"] == "REGRESSION"
    assert next(r for r in rows if r["metric"] == "cnn5.test.ece")["direction"] == "lower"
    p = GateParams(tolerances={"x.brier": 0.01}, lower_is_better=["*.brier"])
    assert not check({"x.brier": 0.2}, {"x.brier": 0.1}, p)[1]
    assert check({"x.brier": 0.05}, {"x.brier": 0.1}, p)[1]


def test_new_metrics_reported_and_unlisted_unchecked():
    rows, ok = check({**BASE, "vgg16.test.accuracy": 0.5, "cnn5.test.loss": 9.0}, BASE, P)
    assert ok and verdicts(rows)["vgg16.test.accuracy"] == "new" and "cnn5.test.loss" not in verdicts(rows)
    p = P.model_copy(update={"default_tolerance": 0.0})
    rows, ok = check({**BASE, "cnn5.test.loss": 9.0}, {**BASE, "cnn5.test.loss": 1.0}, p)
    assert not ok and verdicts(rows)["cnn5.test.loss"] == "REGRESSION"


def test_exact_key_beats_pattern():
    p = GateParams(tolerances={"*.accuracy": 0.0, "cnn5.accuracy": 0.1})
    rows, ok = check({"cnn5.accuracy": 0.85}, {"cnn5.accuracy": 0.9}, p)
    assert ok and rows[0]["tolerance"] == 0.1


def test_collect_metrics_flattens(tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"test": {"accuracy": 0.9, "per_class": {"a": {"auc": None, "f1": 0.5}}},
                             "classes": ["a"], "ok": True, "note": "x", "n": 3}))
    flat = collect_metrics({"cnn5": {"test": {"accuracy": 0.9}}, "resnet18": str(f)})
    assert flat == {"cnn5.test.accuracy": 0.9, "resnet18.test.accuracy": 0.9, "resnet18.test.per_class.a.f1": 0.5,
                    "resnet18.n": 3.0}
    assert collect_metrics({"": {"a": {"b": 1}}}) == {"a.b": 1.0}


def test_write_and_load_baseline(tmp_path):
    path = tmp_path / "metrics" / "baseline.json"
    write_baseline({"b.x": 1.0, "a.y": 2, "c": float("nan")}, path)
    text = path.read_text()
    assert text.index('"a.y"') < text.index('"b.x"') and "NaN" not in text
    assert load_baseline(path) == {"a.y": 2.0, "b.x": 1.0}
    assert not list(path.parent.glob("*.tmp"))


def test_format_table():
    rows, _ = check({**BASE, "cnn5.test.accuracy": 0.85}, BASE, P)
    table = format_table(rows)
    lines = table.splitlines()
    for col in ("metric", "baseline", "current", "change", "tolerance", "verdict"):
        assert col in lines[0]
    assert any("REGRESSION" in l and "-0.0500" in l for l in lines)
    assert "1 failing" in lines[-1]
    body = lines[2:-1]
    assert len(body) == len(rows)
    col = lines[0].index("verdict")  # columns aligned: every verdict starts under the header
    assert all(line[col:].strip() == r["verdict"] for line, r in zip(body, rows))


def test_baseline_carries_the_fingerprints_of_the_evaluated_images(tmp_path):
    from lungxray.compare.gate import load_baseline_sets, set_mismatches

    path = tmp_path / "baseline.json"
    sets = {"cnn5.test_set": "t1", "cnn5.val_set": "v1", "resnet18.test_set": "t1", "resnet18.val_set": "v1"}
    write_baseline(BASE, path, sets)
    assert load_baseline(path) == BASE  # the fingerprints are not metrics
    assert load_baseline_sets(path) == sets
    assert set_mismatches(sets, load_baseline_sets(path), BASE) == []


def test_other_images_than_the_baselines_are_listed():
    from lungxray.compare.gate import set_mismatches

    base_sets = {"cnn5.test_set": "t1", "cnn5.val_set": "v1"}
    now = {"cnn5.test_set": "t2", "cnn5.val_set": "v1", "vgg16.test_set": "t2"}  # vgg16: new, not in the baseline
    assert set_mismatches(now, base_sets, {"cnn5.test.accuracy": 0.9}) == [
        {"key": "cnn5.test_set", "baseline": "t1", "current": "t2"}]
    # a baseline written before fingerprints were recorded cannot vouch for its images
    assert [m["key"] for m in set_mismatches(now, {}, {"cnn5.test.accuracy": 0.9})] == ["cnn5.test_set",
                                                                                         "cnn5.val_set"]
