"""Model variants (``train.variants``): an architecture plus options under its own name, trained, evaluated, reloaded
and ranked side by side with the other models (a freeze sweep needs several of one architecture in one run)."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from lungxray.compare.leaderboard import leaderboard, leaderboard_rows
from lungxray.core.tracking import MlflowParams
from lungxray.evaluate.evaluation import EvaluateParams, evaluate_model
from lungxray.models.trained import load_trained_model
from lungxray.train.fit import train_model
from lungxray.train.settings import TrainParams, model_settings, resolved_settings

from helpers.processed import make_processed, train_params

SWEEP = {"resnet18_f1": {"model": "resnet18", "freeze": 1}, "resnet18_f4": {"model": "resnet18", "freeze": 4}}


def test_a_variant_resolves_to_its_architecture_with_its_own_options_and_model_options_win():
    p = TrainParams(models=["resnet18_f1", "resnet18_f4", "resnet18"], lr=1e-3, variants=SWEEP,
                    model_options={"resnet18_f4": {"lr": 1e-4}, "resnet18": {"freeze": 2}})
    f1, f4, plain = (model_settings(p, m) for m in p.models)
    assert (f1.model, f1.freeze, f1.lr) == ("resnet18", 1, 1e-3)
    assert (f4.model, f4.freeze, f4.lr) == ("resnet18", 4, 1e-4)  # model_options.<variant> overrides one key only
    assert (plain.model, plain.freeze) == ("resnet18", 2)
    assert resolved_settings(p, "resnet18_f1") != resolved_settings(p, "resnet18_f4")


def test_changing_another_variant_does_not_change_a_models_resolved_settings():
    a = TrainParams(models=["resnet18_f1", "resnet18_f4"], variants=SWEEP)
    b = TrainParams(models=["resnet18_f1", "resnet18_f4"], variants={**SWEEP, "resnet18_f4": {"model": "resnet18",
                                                                                               "freeze": 3}})
    assert resolved_settings(a, "resnet18_f1") == resolved_settings(b, "resnet18_f1")
    assert resolved_settings(a, "resnet18_f4") != resolved_settings(b, "resnet18_f4")


def test_a_models_own_seed_resolves_into_its_settings_and_defaults_to_train_seed():
    p = TrainParams(models=["cnn5_s1", "cnn5"], seed=7, variants={"cnn5_s1": {"model": "cnn5", "seed": 1}})
    assert (model_settings(p, "cnn5_s1").seed, model_settings(p, "cnn5").seed) == (1, 7)
    assert resolved_settings(p, "cnn5_s1")["seed"] == 1 and resolved_settings(p, "cnn5")["seed"] == 7
    q = TrainParams(models=["cnn5"], seed=7, model_options={"cnn5": {"seed": 3}})
    assert model_settings(q, "cnn5").seed == 3 and resolved_settings(q, "cnn5") != resolved_settings(p, "cnn5")
    assert model_settings(TrainParams(models=["cnn5"], seed=7, model_options={"cnn5": {"seed": 0}}), "cnn5").seed == 0


def _one_epoch_weights(tmp_path, name: str, **kw) -> dict:
    """model.pt's weights after one epoch of ``name`` on the tiny synthetic set (``kw``: train settings)."""
    processed = tmp_path / "processed"
    if not processed.exists():
        make_processed(tmp_path, n_train=12, n_val=6, size=32)
    p = train_params(tmp_path, models=[name], epochs=1, batch_size=6, device="cpu", precision="fp32",
                     mlflow=MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                                         artifact_dir=str(tmp_path / "a")), **kw)
    train_model(name, p, processed, tmp_path / "models" / name, tmp_path / "metrics" / name, progress=False)
    return torch.load(tmp_path / "models" / name / "model.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_two_seed_variants_of_one_model_train_from_different_weights_and_train_seed_is_the_default(tmp_path):
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    seeds = {"cnn5_s0": {"model": "cnn5", "seed": 0}, "cnn5_s1": {"model": "cnn5", "seed": 1}}
    s0 = _one_epoch_weights(tmp_path, "cnn5_s0", variants=seeds, seed=0)
    s1 = _one_epoch_weights(tmp_path, "cnn5_s1", variants=seeds, seed=0)
    plain = _one_epoch_weights(tmp_path, "cnn5", seed=0)
    assert not torch.equal(s0["features.0.weight"], s1["features.0.weight"])
    assert s0.keys() == plain.keys() and all(torch.equal(s0[k], plain[k]) for k in s0)  # seed 0 = train.seed 0


def test_a_variant_of_an_unknown_architecture_is_an_error_listing_the_valid_ones():
    with pytest.raises(ValidationError, match=r"variant 'resnet19_f1': unknown architecture 'resnet19'; valid: .*resnet18"):
        TrainParams(models=["resnet19_f1"], variants={"resnet19_f1": {"model": "resnet19", "freeze": 1}})


def test_an_undefined_variant_name_in_models_is_an_error_naming_the_defined_variants():
    with pytest.raises(ValidationError, match=r"unknown model\(s\) \['resnet18_f2'\].*variants resnet18_f1"):
        TrainParams(models=["resnet18_f2"], variants=SWEEP)
    with pytest.raises(ValidationError, match="unknown model"):
        TrainParams(models=["cnn5"], variants=SWEEP, model_options={"resnet18_f9": {"lr": 0.1}})


def test_a_variant_named_like_an_architecture_or_unsafe_as_a_folder_is_refused():
    with pytest.raises(ValidationError, match="has the name of an architecture"):
        TrainParams(models=["cnn5"], variants={"resnet34": {"model": "resnet18"}})
    with pytest.raises(ValidationError, match="must use only letters"):
        TrainParams(models=["cnn5"], variants={"../x": {"model": "resnet18"}})


@pytest.mark.slow
def test_two_variants_of_one_architecture_train_evaluate_reload_and_share_the_leaderboard(tmp_path):
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    processed = make_processed(tmp_path, n_train=24, n_val=12, size=32)
    index = pd.read_csv(processed / "index.csv")
    index.assign(unit=index.id).to_csv(processed / "index.csv", index=False)  # one image per split unit
    p = train_params(tmp_path, models=list(SWEEP), variants=SWEEP, epochs=1, batch_size=12)
    ev = EvaluateParams(bootstrap=20, latency_batches=1, batch_size=16)
    trained = {}
    for name in SWEEP:
        t = train_model(name, p, processed, tmp_path / "models" / name, tmp_path / "metrics" / name, progress=False)
        evaluate_model(name, processed, tmp_path / "models" / name / "model.pt", tmp_path / "metrics" / name,
                       tmp_path / "reports" / name, ev, t, p.mlflow)
        trained[name] = t
    assert trained["resnet18_f4"]["trainable_parameters"] < trained["resnet18_f1"]["trainable_parameters"]

    trained_f4 = load_trained_model(tmp_path / "models/resnet18_f4/model.pt")
    assert trained_f4.name == "resnet18_f4" and trained_f4.architecture == "resnet18"
    model = trained_f4.network
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    frozen = model.get_submodule("layer4")
    assert not any(q.requires_grad for q in frozen.parameters())  # rebuilt with the variant's freeze

    df, md = leaderboard(leaderboard_rows(list(SWEEP), tmp_path / "metrics"))
    assert set(df.model) == set(SWEEP) and "resnet18_f1" in md and "resnet18_f4" in md
