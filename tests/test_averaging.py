"""Weight averaging (EMA/SWA) and the learning-rate warm-up of the train stage."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lungxray.models.trained import load_trained_model
from lungxray.train.averaging import WeightAverage, choose
from lungxray.train.fit import train_model
from lungxray.train.loop import ArrayBatches, Feed, run_epoch

from helpers.interrupt import interrupt_after_epochs
from helpers.processed import make_processed, train_params


def params(tmp, **kw):
    """The shared small settings, without logging an MLflow model (not what these tests look at)."""
    from lungxray.core.tracking import MlflowParams

    return train_params(tmp, mlflow=MlflowParams(tracking_uri=f"sqlite:///{tmp}/mlruns/mlflow.db",
                                                 artifact_dir=str(tmp / "mlruns" / "artifacts")),
                        **kw)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def sgd_steps(model: nn.Module, n: int, on_step) -> list[dict]:
    """``n`` SGD steps on random data; the model's weights and buffers after each step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    states = []
    for _ in range(n):
        x, y = torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        on_step(model)
        states.append({k: v.detach().clone().float() for k, v in model.state_dict().items()})
    return states


def test_ema_weights_and_batchnorm_statistics_equal_the_hand_computed_average_over_a_few_steps():
    model, decay = tiny_model(), 0.7
    avg = WeightAverage(model, "ema", ema_decay=decay)
    states = sgd_steps(model, 4, avg.after_step)
    expected = dict(states[0])  # the first step's weights start the average
    for s in states[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * s[k] for k in s}
    got = avg.module.state_dict()
    for k in ("0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var", "3.weight"):
        assert torch.allclose(got[k].float(), expected[k], atol=1e-6), k
    assert not torch.allclose(got["0.weight"], model.state_dict()["0.weight"])  # an average, not the last weights


def test_swa_is_the_equal_mean_of_the_end_of_epoch_weights_from_swa_start_with_recomputed_batchnorm_statistics():
    model = tiny_model()
    avg = WeightAverage(model, "swa", swa_start=2)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(2)) * 3 + 1
    ends = []
    for epoch in (1, 2, 3):
        ends.append(sgd_steps(model, 2, lambda m: None)[-1])
        avg.end_epoch(model, epoch, lambda: [x[:32], x[32:]])
    assert int(avg.averaged.n_averaged) == 2  # epochs 2 and 3 only
    mean = (ends[1]["0.weight"] + ends[2]["0.weight"]) / 2
    assert torch.allclose(avg.module.state_dict()["0.weight"], mean, atol=1e-6)
    with torch.no_grad():  # update_bn: the statistics of the averaged model's own activations on the given inputs
        h = avg.module[0](x)
    assert torch.allclose(avg.module[1].running_mean, h.mean(0), atol=1e-5)


def test_the_lower_val_loss_of_raw_and_averaged_weights_is_chosen_raw_on_a_tie():
    assert choose((0.3, 0.9), (0.2, 0.8), "ema") == {"val_loss": 0.2, "val_accuracy": 0.8, "weights": "ema"}
    assert choose((0.2, 0.9), (0.3, 0.95), "ema")["weights"] == "raw"
    assert choose((0.2, 0.9), (0.2, 0.95), "swa")["weights"] == "raw"
    assert choose((0.2, 0.9), (math.nan, math.nan), "swa")["weights"] == "raw"  # swa not started yet
    assert choose((0.2, 0.9), None, "none")["weights"] == "raw"


def val_loss_of(model_pt, processed) -> float:
    model = load_trained_model(model_pt)
    x, y = np.load(processed / "val.npy"), pd.read_csv(processed / "index.csv").query("split == 'val'").label_idx
    feed = Feed(torch.device("cpu"), model.mean, model.std, channels_last=True)
    loss, _, _ = run_epoch(model.network, ArrayBatches(x, y.to_numpy(), 16), nn.CrossEntropyLoss(), feed)
    return loss


@pytest.mark.parametrize("decay", [0.5, 0.99])
def test_the_better_on_val_of_raw_and_averaged_weights_becomes_the_model_and_is_recorded(tmp_path, mlflow_env, decay):
    """Whichever weights win (decay 0.5 follows the raw weights closely, 0.99 lags them), model.pt is that one."""
    processed = make_processed(tmp_path)
    p = params(tmp_path, epochs=3, weight_averaging="ema", ema_decay=decay, precision="fp32")
    m = train_model("cnn5", p, processed, tmp_path / "m", tmp_path / "x", progress=False)
    hist = pd.read_csv(tmp_path / "x/history.csv")
    both = pd.concat([hist[["epoch", "val_loss"]].assign(w="raw"),
                      hist[["epoch", "val_loss_avg"]].rename(columns={"val_loss_avg": "val_loss"}).assign(w="ema")])
    best = both.sort_values(["val_loss", "w"], ascending=[True, False], kind="stable").iloc[0]
    ck = torch.load(tmp_path / "m/model.pt", weights_only=True)
    assert (ck["weights"], ck["best_epoch"]) == (best.w, best.epoch)
    assert json.loads((tmp_path / "x/train.json").read_text())["kept_weights"] == best.w == m["kept_weights"]
    assert val_loss_of(tmp_path / "m/model.pt", processed) == pytest.approx(best.val_loss, rel=1e-4)


def test_an_interrupted_run_resumes_its_weight_average_as_an_uninterrupted_run_has_it(tmp_path, mlflow_env,
                                                                                      monkeypatch):
    processed = make_processed(tmp_path)
    p = params(tmp_path, epochs=2, weight_averaging="ema", ema_decay=0.9)
    train_model("cnn5", p, processed, tmp_path / "a", tmp_path / "xa", progress=False)
    interrupt_after_epochs(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train_model("cnn5", p, processed, tmp_path / "b", tmp_path / "xb", progress=False)
    assert int(torch.load(tmp_path / "b/checkpoint.pt", weights_only=True)["averaged"]["n_averaged"]) == 4  # 60/16
    monkeypatch.undo()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train_model("cnn5", p, processed, tmp_path / "b", tmp_path / "xb", progress=False)
    a, b = pd.read_csv(tmp_path / "xa/history.csv"), pd.read_csv(tmp_path / "xb/history.csv")
    assert np.allclose(a.val_loss, b.val_loss, rtol=1e-5)
    assert np.allclose(a.val_loss_avg, b.val_loss_avg, rtol=1e-5)  # not an average restarted at the resume


def test_warmup_raises_the_lr_linearly_then_the_cosine_runs_over_the_remaining_epochs(tmp_path, mlflow_env):
    processed = make_processed(tmp_path)
    p = params(tmp_path, epochs=4, lr=0.03, optimizer="adamw", scheduler="cosine", warmup_epochs=2)
    train_model("cnn5", p, processed, tmp_path / "m", tmp_path / "x", progress=False)
    lrs = pd.read_csv(tmp_path / "x/history.csv").lr.to_numpy()
    cosine = [0.5 * (1 + math.cos(math.pi * t / 2)) for t in range(2)]
    assert np.allclose(lrs, 0.03 * np.array([1 / 3, 2 / 3, *cosine]), rtol=1e-6)


def test_warmup_with_the_plateau_scheduler_is_a_clear_error(tmp_path, mlflow_env):
    from lungxray.core.errors import LungxrayError

    processed = make_processed(tmp_path)
    with pytest.raises(LungxrayError, match="warmup_epochs"):
        train_model("cnn5", params(tmp_path, scheduler="plateau", warmup_epochs=1), processed, tmp_path / "m",
                    tmp_path / "x", progress=False)
