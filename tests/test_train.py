from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lungxray.train import (MlflowParams, TrainParams, class_weights, load_trained, model_settings, train_model)

CLASSES = ["normal", "pneumonia", "covid19"]


def make_processed(root: Path, n_train=60, n_val=24, size=32, seed=0) -> Path:
    """A tiny preprocessed data set whose classes differ visibly (bright / dark / striped)."""
    rng = np.random.default_rng(seed)
    out = root / "processed"
    out.mkdir(parents=True)
    rows = []
    for split, n in (("train", n_train), ("val", n_val), ("test", 6)):
        labels = np.arange(n) % 3
        imgs = rng.integers(60, 100, (n, size, size)).astype(np.uint8)
        imgs[labels == 1] += 90
        imgs[labels == 2, :, ::4] = 250
        np.save(out / f"{split}.npy", imgs)
        rows += [{"split": split, "row": i, "id": f"{split}/{i}", "label": CLASSES[l], "label_idx": int(l),
                  "source": "synthetic"} for i, l in enumerate(labels)]
    pd.DataFrame(rows).to_csv(out / "index.csv", index=False)
    (out / "stats.json").write_text(json.dumps({"classes": CLASSES, "image_size": size, "mean": 0.4, "std": 0.2,
                                                "splits": {}}))
    return out


def params(tmp: Path, **kw) -> TrainParams:
    base = dict(models=["cnn5"], epochs=3, batch_size=16, lr=3e-3, pretrained=False,
                early_stopping_patience=5, mlflow=MlflowParams(tracking_uri=f"sqlite:///{tmp}/mlruns/mlflow.db",
                                                               artifact_dir=str(tmp / "mlruns" / "artifacts")))
    base.update(kw)
    return TrainParams(**base)


@pytest.fixture
def mlflow_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_class_weights_balance_and_absent_classes():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w[2] == 0 and w[1] == pytest.approx(3 * w[0])


def test_model_options_override():
    p = TrainParams(models=["resnet18"], lr=1e-3, model_options={"resnet18": {"lr": 1e-4, "freeze": 2}})
    s = model_settings(p, "resnet18")
    assert s["lr"] == 1e-4 and s["freeze"] == 2 and s["batch_size"] == p.batch_size


def test_unknown_model_name_is_a_config_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown model"):
        TrainParams(models=["resnet19"])


def test_train_writes_model_metrics_history_and_mlflow_run(tmp_path, mlflow_env):
    processed = make_processed(tmp_path)
    p = params(tmp_path)
    m = train_model("cnn5", p, processed, tmp_path / "models/cnn5", tmp_path / "metrics/cnn5", progress=False)
    assert m["epochs_run"] == 3 and m["best_val_accuracy"] > 0.6  # the classes are easy to tell apart
    assert m["trainable_parameters"] == m["total_parameters"] > 0
    ck = torch.load(tmp_path / "models/cnn5/model.pt", weights_only=True)  # safe format
    assert ck["classes"] == CLASSES and ck["config"]["settings"]["model"] == "cnn5"
    model, _ = load_trained(tmp_path / "models/cnn5/model.pt")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    hist = pd.read_csv(tmp_path / "metrics/cnn5/history.csv")
    assert hist.epoch.tolist() == [1, 2, 3]
    assert json.loads((tmp_path / "metrics/cnn5/train.json").read_text())["best_epoch"] == m["best_epoch"]

    import mlflow

    run = mlflow.get_run(m["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "cnn5" and run.data.params["train.optimizer"] == "adam"
    assert run.data.tags["git_commit"] and run.data.tags["data_version"]
    client = mlflow.MlflowClient()
    assert [x.step for x in client.get_metric_history(run.info.run_id, "val/accuracy")] == [1, 2, 3]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "training_curve.png" in arts
    logged = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    assert np.asarray(logged.predict(x)).shape == (4, 3)  # a batch, not only the example's size
    assert not any("KAGGLE" in k.upper() for k in run.data.params)


def test_early_stopping(tmp_path, mlflow_env):
    processed = make_processed(tmp_path)
    p = params(tmp_path, epochs=30, lr=5.0, optimizer="sgd", early_stopping_patience=1,
               mlflow=MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/db.sqlite", artifact_dir=str(tmp_path / "a"),
                                   log_model=False))
    m = train_model("cnn5", p, processed, tmp_path / "m", tmp_path / "x", progress=False)
    assert m["stopped_early"] and m["epochs_run"] < 30


SCRIPT = """
import sys, json
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_train import params
from lungxray.train import train_model
tmp = Path({tmp!r})
train_model("cnn5", params(tmp, epochs=int(sys.argv[1])), tmp / "processed", tmp / "models/cnn5", tmp / "metrics/cnn5")
"""


def test_kill_9_then_rerun_resumes_from_the_checkpoint(tmp_path, mlflow_env):
    make_processed(tmp_path, n_train=900, n_val=60, size=48)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), tmp=str(tmp_path)))
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, str(script), "4"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    ckpt = tmp_path / "models/cnn5/checkpoint.pt"
    deadline = time.monotonic() + 300  # a bound on waiting, not a speed assertion
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), proc.stdout.read().decode() if proc.poll() is not None else "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = torch.load(ckpt, weights_only=True)["epoch"]
    assert done < 4, "the run finished before it could be interrupted; make it longer"
    assert not (tmp_path / "models/cnn5/model.pt").exists()  # no final model from a partial run
    assert not (tmp_path / "metrics/cnn5/train.json").exists()
    run_id = torch.load(ckpt, weights_only=True)["mlflow_run_id"]

    out = subprocess.run([sys.executable, str(script), "4"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resuming after epoch {done}" in out.stdout
    hist = pd.read_csv(tmp_path / "metrics/cnn5/history.csv")
    assert hist.epoch.tolist() == [1, 2, 3, 4]
    metrics = json.loads((tmp_path / "metrics/cnn5/train.json").read_text())
    assert metrics["mlflow_run_id"] == run_id  # the same MLflow run continued
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == [1, 2, 3, 4]


def test_changed_config_starts_afresh(tmp_path, mlflow_env, capsys):
    processed = make_processed(tmp_path)
    train_model("cnn5", params(tmp_path, epochs=1), processed, tmp_path / "m", tmp_path / "x", progress=False)
    train_model("cnn5", params(tmp_path, epochs=2, lr=1e-3), processed, tmp_path / "m", tmp_path / "x",
                progress=False)
    assert "another configuration; starting afresh" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "x/history.csv").epoch.tolist() == [1, 2]


def test_batches_cover_the_split_once_and_are_seeded():
    from lungxray.train import ArrayBatches

    x = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4)
    y = np.arange(10)
    seen = [int(l) for _, yb in ArrayBatches(x, y, 3, "shuffle", torch.Generator().manual_seed(1)) for l in yb]
    assert sorted(seen) == list(range(10))
    again = [int(l) for _, yb in ArrayBatches(x, y, 3, "shuffle", torch.Generator().manual_seed(1)) for l in yb]
    assert seen == again
    for xb, yb in ArrayBatches(x, y, 4, "shuffle", torch.Generator().manual_seed(2)):
        assert xb.shape[1] == 1 and all(int(xb[i, 0, 0, 0]) == int(yb[i]) * 16 for i in range(len(yb)))
    w = torch.tensor([0.0] * 9 + [1.0])
    drawn = [int(l) for _, yb in ArrayBatches(x, y, 5, "weighted", torch.Generator().manual_seed(0), w) for l in yb]
    assert drawn == [9] * 10


def test_augmentation_is_small_and_never_flips_vertically():
    from lungxray.train import AugmentParams, augment_batch

    img = torch.zeros(1, 1, 32, 32)
    img[..., :8, :] = 1.0  # bright band at the top (e.g. the clavicles)
    batch = img.repeat(16, 1, 1, 1)
    out = augment_batch(batch, AugmentParams(), torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and 0 <= out.min() and out.max() <= 1
    assert (out[..., :8, :].mean(dim=(1, 2, 3)) > out[..., -8:, :].mean(dim=(1, 2, 3))).all()  # top stays on top
    assert not torch.equal(out[0], out[1])  # per-image random parameters
    off = AugmentParams(degrees=0, translate=0, scale=(1.0, 1.0), brightness=0, contrast=0)
    assert torch.allclose(augment_batch(batch, off), batch, atol=1e-5)
