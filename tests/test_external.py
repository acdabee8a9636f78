"""Leave-one-source-out: the folds and their leakage rule, the figures of a fold, the stage, the leaderboard column."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lungxray.cli.params_check import parse_params
from lungxray.compare.leaderboard import external_figures, leaderboard, leaderboard_rows
from lungxray.compare.promote import PromotionParams
from lungxray.core.errors import ConfigError, LungxrayError
from lungxray.evaluate.metrics import EvaluateParams
from lungxray.external.folds import fold_problem, kept_index, make_fold, source_counts, write_fold
from lungxray.external.plan import ExternalParams, choose_models, external_plan
from lungxray.external.report import external_summary, fold_metrics
from lungxray.external.run import choose_sources, fold_train_params
from lungxray.train.settings import TrainParams

from conftest import REPO
from helpers.multisource import SHARED_UNIT, make_multisource_processed, write_in_source_metrics

# --- the folds --------------------------------------------------------------------------------------------------------


def test_an_image_sharing_a_unit_with_the_held_out_source_never_trains_or_selects_its_fold(tmp_path):
    index = kept_index(make_multisource_processed(tmp_path))
    fold = make_fold(index, "alpha")
    assert set(fold.test.id) == {f"alpha/{s}/{i}" for s, n in (("train", 12), ("val", 6), ("test", 3))
                                 for i in range(n)}  # every kept image of alpha, whatever its split
    assert set(fold.train.source) == set(fold.val.source) == {"beta", "gamma"}
    assert SHARED_UNIT not in set(fold.train.unit) | set(fold.val.unit)
    assert fold.excluded == {"train": 1, "val": 1}  # beta's train image, gamma's val image
    assert len(fold.train) == 2 * 12 - 1 and len(fold.val) == 2 * 6 - 1
    # held out beta: alpha's copy of the patient is in alpha's test split, which no fold trains on anyway
    assert make_fold(index, "beta").excluded == {"train": 0, "val": 1}
    assert make_fold(index, "gamma").excluded == {"train": 1, "val": 0}


def test_a_fold_folder_holds_the_folds_images_with_its_own_training_statistics(tmp_path):
    processed = make_multisource_processed(tmp_path)
    fold = make_fold(kept_index(processed), "gamma")
    stats = write_fold(fold, processed, tmp_path / "fold")
    index = pd.read_csv(tmp_path / "fold" / "index.csv", keep_default_na=False)
    for split, part in fold.parts().items():
        arr = np.load(tmp_path / "fold" / f"{split}.npy")
        rows = index[index.split == split].sort_values("row")
        assert rows.id.tolist() == part.id.tolist()
        for i, (src_split, row) in enumerate(zip(part.split, part.row)):
            assert np.array_equal(arr[i], np.load(processed / f"{src_split}.npy")[row])
    train = np.load(tmp_path / "fold" / "train.npy").astype(np.float64) / 255
    assert stats["mean"] == pytest.approx(train.mean(), abs=1e-6)
    assert stats["std"] == pytest.approx(train.std(), abs=1e-5)
    assert set(index[index.split == "test"].source_split) == {"train", "val", "test"}
    assert not (tmp_path / "fold.partial").exists()


def test_sources_default_to_those_with_enough_kept_images_and_an_unknown_one_is_a_clear_error(tmp_path):
    counts = {"alpha": 30, "beta": 5, "gamma": 12}
    assert choose_sources(ExternalParams(min_images=12), counts) == ["alpha", "gamma"]
    assert choose_sources(ExternalParams(sources=["beta"]), counts) == ["beta"]
    assert choose_sources(ExternalParams(sources=[]), counts) == []
    with pytest.raises(LungxrayError, match=r"delta.*alpha \(30\)"):
        choose_sources(ExternalParams(sources=["delta"]), counts)


def test_a_fold_whose_other_sources_have_no_val_image_is_named_not_trained(tmp_path):
    index = kept_index(make_multisource_processed(tmp_path))
    only_alpha_val = index[(index.split != "val") | (index.source == "alpha")]
    assert "no val image" in fold_problem(make_fold(only_alpha_val, "alpha"))
    assert fold_problem(make_fold(only_alpha_val, "beta")) is None
    assert source_counts(index) == {"alpha": 21, "beta": 21, "gamma": 21}


def test_default_models_are_the_leaderboards_first_and_the_smallest(tmp_path):
    write_in_source_metrics(tmp_path, "cnn5", val_macro_recall=0.70, total_parameters=100)
    write_in_source_metrics(tmp_path, "resnet18", val_macro_recall=0.90, total_parameters=10_000)
    write_in_source_metrics(tmp_path, "cnn8", val_macro_recall=0.80, total_parameters=500)
    train = TrainParams(models=["cnn5", "resnet18", "cnn8"])
    models, rule = choose_models(ExternalParams(), train, tmp_path, PromotionParams())
    assert models == ["resnet18", "cnn5"] and "row 1 of the leaderboard" in rule
    models, _ = choose_models(ExternalParams(), TrainParams(models=["cnn5", "cnn8"]), tmp_path, PromotionParams())
    assert models == ["cnn8", "cnn5"]
    assert choose_models(ExternalParams(models=["cnn8"]), train, tmp_path, PromotionParams()) == (["cnn8"],
                                                                                                "external.models")


def write_settings(root: Path, train: TrainParams, external: ExternalParams | None = None) -> Path:
    """What the train_settings stage writes (``models/settings/<model>.json``) under ``root``."""
    from lungxray.external.plan import settings_models
    from lungxray.train.settings import settings_record

    for name in settings_models(external or ExternalParams(), train):
        (root / f"{name}.json").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.json").write_text(json.dumps(settings_record(train, name)))
    return root


def test_the_plan_holds_the_chosen_models_and_their_in_source_figures_and_ignores_the_ensembles_outputs(tmp_path):
    write_in_source_metrics(tmp_path, "cnn5", val_macro_recall=0.70, total_parameters=100,
                            by_source={"alpha": {"macro_recall": 0.6, "accuracy": 0.7, "n_samples": 3, "auc": 0.8}})
    write_in_source_metrics(tmp_path, "resnet18", val_macro_recall=0.90, total_parameters=10_000)
    train = TrainParams(models=["cnn5", "resnet18"])
    settings = write_settings(tmp_path / "settings", train, ExternalParams(models=["cnn8"]))
    plan = external_plan(ExternalParams(), train, tmp_path, PromotionParams(), settings)
    assert plan["models"] == ["resnet18", "cnn5"] and plan["models_rule"] == choose_models(
        ExternalParams(), train, tmp_path, PromotionParams())[1]
    assert plan["in_source"]["cnn5"] == {"macro_recall": 0.9, "macro_recall_ci_low": 0.8, "macro_recall_ci_high": 0.95,
                                         "accuracy": 0.9,
                                         "by_source": {"alpha": {"n_samples": 3, "macro_recall": 0.6, "accuracy": 0.7}}}
    write_in_source_metrics(tmp_path, "ensemble", val_macro_recall=0.99, total_parameters=1)
    assert external_plan(ExternalParams(), train, tmp_path, PromotionParams(), settings) == plan
    named = external_plan(ExternalParams(models=["cnn8"]), train, tmp_path, PromotionParams(), settings)
    assert named == {"models": ["cnn8"], "models_rule": "external.models", "in_source": {"cnn8": None},
                     "settings": {"cnn8": json.loads((settings / "cnn8.json").read_text())}}


def test_the_plan_carries_the_settings_of_the_chosen_architectures_only_and_the_stage_trains_with_no_other():
    """The external stage depends on the plan, not on the whole train section: the plan holds the chosen
    architectures' settings files, and the stage refuses a train section that gives them other settings."""
    from lungxray.external.plan import settings_problem
    from lungxray.train.settings import settings_record

    train = TrainParams(models=["cnn5", "resnet18"], model_options={"cnn5": {"lr": 0.01}})
    plan = {"models": ["cnn5"], "settings": {"cnn5": json.loads(json.dumps(settings_record(train, "cnn5")))}}
    assert settings_problem(plan, train) is None
    other = TrainParams(models=["cnn5", "resnet18"], model_options={"cnn5": {"lr": 0.01}, "resnet18": {"lr": 0.5}})
    assert settings_problem(plan, other) is None  # another model's options: nothing the folds train changed
    changed = TrainParams(models=["cnn5", "resnet18"], model_options={"cnn5": {"lr": 0.02}})
    assert "settings of cnn5" in settings_problem(plan, changed)
    assert "older version" in settings_problem({"models": ["cnn5"]}, train)


def test_the_plan_names_a_missing_settings_file_and_the_stage_that_writes_it(tmp_path):
    with pytest.raises(LungxrayError, match=r"cnn8\.json is missing.*train_settings"):
        external_plan(ExternalParams(models=["cnn8"]), TrainParams(models=["cnn5"]), tmp_path, PromotionParams(),
                      tmp_path / "settings")


def test_the_epochs_override_applies_to_every_fold_model():
    train = TrainParams(models=["cnn5"], epochs=30, model_options={"cnn5": {"epochs": 12, "lr": 0.01}})
    fold = fold_train_params(train, 2)
    from lungxray.train.settings import model_settings

    assert model_settings(fold, "cnn5").epochs == 2 and model_settings(fold, "cnn5").lr == 0.01
    assert model_settings(fold_train_params(train, None), "cnn5").epochs == 12


def test_the_epochs_override_applies_to_a_variant_that_sets_its_own_epochs():
    from lungxray.train.settings import model_settings

    train = TrainParams(models=["cnn8_s1"], epochs=30, variants={"cnn8_s1": {"model": "cnn8", "seed": 1, "epochs": 20}})
    fold = fold_train_params(train, 2)
    assert model_settings(fold, "cnn8_s1").epochs == 2 and model_settings(fold, "cnn8_s1").seed == 1
    assert model_settings(fold_train_params(train, None), "cnn8_s1").epochs == 20


def test_check_params_knows_the_external_section():
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    assert parse_params(data).external == ExternalParams(**data["external"])
    with pytest.raises(ConfigError, match=r"external\.min_image"):
        parse_params({**data, "external": {"min_image": 3}})
    with pytest.raises(ConfigError, match="unknown model"):
        parse_params({**data, "external": {"models": ["resnet19"]}})
    shared = yaml.safe_load((REPO / "configs" / "shared-data.yaml").read_text())
    assert parse_params(shared).external.models == ["cnn5"]


# --- the figures ------------------------------------------------------------------------------------------------------


def test_fold_figures_on_a_known_case():
    classes = ["normal", "pneumonia", "covid19"]
    y = np.array([0, 0, 0, 1, 1])  # the held-out source has no covid19 image
    probs = np.array([[.8, .1, .1], [.6, .3, .1], [.2, .7, .1], [.3, .6, .1], [.1, .2, .7]])
    m = fold_metrics(y, probs, classes, EvaluateParams(bootstrap=0), units=["a", "b", "c", "d", "e"])
    assert set(m["per_class"]) == {"normal", "pneumonia"}  # classes it has
    normal, pneumonia = m["per_class"]["normal"], m["per_class"]["pneumonia"]
    assert normal["support"] == 3 and normal["sensitivity"] == pytest.approx(2 / 3)
    assert normal["specificity"] == pytest.approx(1.0)  # neither pneumonia image is called normal
    assert pneumonia["sensitivity"] == pytest.approx(1 / 2) and pneumonia["specificity"] == pytest.approx(2 / 3)
    assert normal["auc"] == pytest.approx(5 / 6)  # normal scores .8 .6 .2 against .3 .1: all pairs but (.2, .3)
    assert pneumonia["auc"] == pytest.approx(3 / 6)  # .6 and .2 against .1 .3 .7: .6 beats two, .2 one
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1 / 2) / 2) and m["accuracy"] == pytest.approx(3 / 5)
    assert normal["sensitivity_ci_low"] is None  # no resamples: no interval


def test_fold_intervals_resample_the_units_and_hold_the_figures():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 40)
    probs = np.clip(np.stack([1 - y, y], 1) * 0.6 + rng.random((80, 2)) * 0.5, 0, None)
    probs /= probs.sum(1, keepdims=True)
    m = fold_metrics(y, probs, ["normal", "pneumonia"], EvaluateParams(bootstrap=300),
                     units=[str(i // 2) for i in range(80)])
    assert m["units"] == 40
    for d in m["per_class"].values():
        for k in ("sensitivity", "specificity", "auc"):
            assert d[f"{k}_ci_low"] <= d[k] <= d[f"{k}_ci_high"] <= 1
    perfect = fold_metrics(np.array([0, 0, 1]), np.array([[.9, .1], [.8, .2], [.3, .7]]), ["a", "b"],
                           EvaluateParams(bootstrap=100), units=["u", "u", "v"])
    assert (perfect["per_class"]["a"]["sensitivity_ci_low"], perfect["per_class"]["a"]["sensitivity_ci_high"]) == (1, 1)


def test_the_summary_averages_macro_recall_over_the_held_out_sources():
    folds = {"alpha": {"models": {"cnn5": {"macro_recall": 0.5}, "cnn8": {"macro_recall": None}}},
             "beta": {"models": {"cnn5": {"macro_recall": 0.7}}}}
    assert external_summary(folds) == {"cnn5": {"mean_macro_recall": pytest.approx(0.6), "folds": 2}}


def test_with_no_source_to_hold_out_the_report_says_so_and_the_leaderboard_shows_dashes(tmp_path):
    from lungxray.external.report import external_markdown, plot_external
    from lungxray.external.run import run_external

    processed = make_multisource_processed(tmp_path)
    plan = {"models": ["cnn5"], "models_rule": "external.models", "in_source": {"cnn5": None}}
    report = run_external(ExternalParams(min_images=1000), TrainParams(models=["cnn5"]), EvaluateParams(), plan,
                          processed, tmp_path / "work")
    assert report["folds"] == {} and report["summary"] == {} and report["models"] == []
    assert "at least 1000 kept images" in external_markdown(report)
    assert plot_external(report, tmp_path / "external.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "external.json").write_text(json.dumps(report))
    assert external_figures(tmp_path / "external.json") == {}


def test_without_its_plan_the_external_stage_stops_naming_it_and_keeps_the_last_report(project, capsys):
    (project / "reports").mkdir(exist_ok=True)
    (project / "reports/external.json").write_text('{"folds": {}}')
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(REPO / "stages" / "external.py"), run_name="__main__")
    assert stopped.value.code == 2 and "external_plan.json is missing" in capsys.readouterr().err
    assert (project / "reports/external.json").read_text() == '{"folds": {}}'


# --- the leaderboard --------------------------------------------------------------------------------------------------


def test_the_leaderboard_shows_the_external_figure_beside_the_in_source_ones_and_a_dash_where_not_run(tmp_path):
    for name, val in (("cnn5", 0.7), ("cnn8", 0.8)):
        write_in_source_metrics(tmp_path / "metrics", name, val_macro_recall=val, total_parameters=100)
    (tmp_path / "external.json").write_text(json.dumps({"summary": {"cnn5": {"mean_macro_recall": 0.61,
                                                                                "folds": 3}}}))
    ext = external_figures(tmp_path / "external.json")
    assert ext == {"cnn5": 0.61} and external_figures(tmp_path / "absent.json") == {}
    df, md = leaderboard(leaderboard_rows(["cnn5", "cnn8"], tmp_path / "metrics", ext))
    header, _, first, second = md.split("\n\n", 1)[1].splitlines()[:4]
    col = header.split(" | ").index("external macro recall")
    assert first.split(" | ")[col] == "-" and second.split(" | ")[col] == "0.6100"  # cnn8 ranks first
    assert df.set_index("model").external_macro_recall.to_dict()["cnn5"] == 0.61
    assert "External macro recall" in md.split("\n\n", 1)[0]


# --- the stage --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_external_stage_holds_each_source_out_reports_it_and_tracks_one_run_per_fold(project, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    processed = make_multisource_processed(project / "data", per_split={"train": 12, "val": 6, "test": 3})
    index = pd.read_csv(processed / "index.csv")
    index.loc[(index.source == "gamma") & (index.split != "train"), "source"] = "gamma_small"  # both below 15
    index.to_csv(processed / "index.csv", index=False)
    write_in_source_metrics(project / "metrics", "cnn5", 0.8, 100, by_source={"alpha": {"macro_recall": 0.9,
                                                                                         "n_samples": 3}})
    (project / "params.yaml").write_text(yaml.safe_dump({
        "external": {"min_images": 15, "models": ["cnn5"], "epochs": 1},
        "train": {"models": ["cnn5"], "batch_size": 16, "pretrained": False, "mlflow": {
            "tracking_uri": f"sqlite:///{project}/mlruns/mlflow.db", "artifact_dir": str(project / "mlruns/art")}},
        "evaluate": {"bootstrap": 50, "latency_batches": 1}}))
    runpy.run_path(str(REPO / "stages" / "train_settings.py"), run_name="__main__")
    runpy.run_path(str(REPO / "stages" / "external_plan.py"), run_name="__main__")
    runpy.run_path(str(REPO / "stages" / "external.py"), run_name="__main__")

    report = json.loads((project / "reports/external.json").read_text())
    assert report["kept_images"] == {"alpha": 21, "beta": 21, "gamma": 12, "gamma_small": 9}
    assert list(report["folds"]) == ["alpha", "beta"]  # sources with at least min_images kept images
    alpha = report["folds"]["alpha"]
    assert alpha["images"] == 21 and alpha["classes"] == {"normal": 7, "pneumonia": 7, "covid19": 7}
    assert alpha["excluded"] == {"train": 1, "val": 1} and alpha["trained_on"] == ["beta", "gamma", "gamma_small"]
    cnn5 = alpha["models"]["cnn5"]
    assert set(cnn5["per_class"]) == {"normal", "pneumonia", "covid19"} and cnn5["epochs_run"] == 1
    assert cnn5["in_source"]["source_test_macro_recall"] == 0.9
    assert cnn5["gap"] == pytest.approx(cnn5["macro_recall"] - 0.9)
    mean = np.mean([f["models"]["cnn5"]["macro_recall"] for f in report["folds"].values()])
    assert report["summary"]["cnn5"]["mean_macro_recall"] == pytest.approx(mean)
    md = (project / "reports/external.md").read_text()
    assert "## held out: alpha" in md and "## held out: beta" in md and "| covid19 | 7 |" in md
    assert (project / "reports/external.png").read_bytes()[:4] == b"\x89PNG"
    fold_dir = project / "models/external/alpha"
    assert not list((fold_dir / "data").glob("*.npy")) and (fold_dir / "data/index.csv").exists()
    assert len(pd.read_csv(fold_dir / "cnn5/predictions.csv")) == 21

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["lungxray"], filter_string="tags.stage = 'external'")
    assert sorted(runs["tags.held_out_source"]) == ["alpha", "beta"]
    assert set(runs["tags.mlflow.runName"]) == {"external/alpha/cnn5", "external/beta/cnn5"}
    assert "metrics.external/macro_recall" in runs.columns


@pytest.mark.slow
def test_kill_9_during_the_external_stage_then_a_rerun_reuses_the_finished_fold_and_resumes_the_one_cut_short(
        tmp_path, monkeypatch, capsys):
    """The fold that finished keeps its model (its fingerprints still match: not retrained); only the fold model that
    was training when the stage was killed resumes, from its last checkpoint."""
    import os
    import signal
    import subprocess
    import sys

    import lungxray.train.fit as train_module
    from lungxray.external.run import run_external
    from lungxray.train.settings import settings_record

    from helpers.processed import train_params

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    processed = make_multisource_processed(tmp_path)
    work = tmp_path / "models/external"
    train = train_params(tmp_path, epochs=2)
    plan = {"models": ["cnn5"], "models_rule": "external.models", "in_source": {"cnn5": None},
            "settings": {"cnn5": json.loads(json.dumps(settings_record(train, "cnn5")))}}
    run = (f"run_external(ExternalParams(sources=['alpha', 'beta']), TrainParams.model_validate_json("
           f"{train.model_dump_json()!r}), EvaluateParams(bootstrap=0), {plan!r}, Path({str(processed)!r}), "
           f"Path({str(work)!r}))")
    killer = f"""
import os, signal
from pathlib import Path
import lungxray.train.fit as T
from lungxray.external.run import run_external
from lungxray.external.plan import ExternalParams
from lungxray.evaluate.metrics import EvaluateParams
from lungxray.train.settings import TrainParams
real, calls = T.run_epoch, []
def run_epoch(model, batches, loss_fn, feed, opt=None, **kwargs):
    if opt is not None:
        calls.append(1)
        if len(calls) == 4:  # alpha's model trained its 2 epochs, beta's its first: killed in beta's second
            os.kill(os.getpid(), signal.SIGKILL)
    return real(model, batches, loss_fn, feed, opt, **kwargs)
T.run_epoch = run_epoch
{run}
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    assert subprocess.run([sys.executable, "-c", killer], env=env).returncode == -signal.SIGKILL
    finished = (work / "alpha/cnn5/model.pt").read_bytes()
    assert not (work / "beta/cnn5/model.pt").exists()

    real, trained = train_module.run_epoch, []

    def run_epoch(model, batches, loss_fn, feed, opt=None, **kwargs):
        if opt is not None:
            trained.append(1)
        return real(model, batches, loss_fn, feed, opt, **kwargs)

    monkeypatch.setattr(train_module, "run_epoch", run_epoch)
    capsys.readouterr()
    report = run_external(ExternalParams(sources=["alpha", "beta"]), train, EvaluateParams(bootstrap=0), plan,
                          processed, work)
    out = capsys.readouterr().out
    assert len(trained) == 1  # beta's second epoch: nothing else was trained again
    assert "reusing the finished model" in out and "resuming after epoch 1" in out and "from scratch" not in out
    assert (work / "alpha/cnn5/model.pt").read_bytes() == finished
    assert {s: f["models"]["cnn5"]["epochs_run"] for s, f in report["folds"].items()} == {"alpha": 2, "beta": 2}
    assert len(pd.read_csv(work / "alpha/cnn5/predictions.csv")) == 21
