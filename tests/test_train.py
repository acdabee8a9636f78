from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lungxray.core.tracking import MlflowParams
from lungxray.models.trained import load_trained_model
from lungxray.train.fit import train_model
from lungxray.train.loop import class_weights
from lungxray.train.settings import TrainParams, model_settings

from conftest import REPO
from helpers.interrupt import interrupt_after_epochs
from helpers.processed import CLASSES, make_processed
from helpers.processed import train_params as params
from helpers.trained import copy_with_store


def test_class_weights_balance_and_absent_classes():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w[2] == 0 and w[1] == pytest.approx(3 * w[0])


def test_model_options_override():
    p = TrainParams(models=["resnet18"], lr=1e-3, model_options={"resnet18": {"lr": 1e-4, "freeze": 2}})
    s = model_settings(p, "resnet18")
    assert s.lr == 1e-4 and s.freeze == 2 and s.batch_size == p.batch_size


def test_unknown_model_name_is_a_config_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown model"):
        TrainParams(models=["resnet19"])


def test_train_writes_model_metrics_history_and_mlflow_run(trained_cnn5, tmp_path, mlflow_env):
    m = trained_cnn5.train
    assert m["epochs_run"] == 3 and m["best_val_accuracy"] > 0.6  # the classes are easy to tell apart
    assert m["trainable_parameters"] == m["total_parameters"] > 0
    ck = torch.load(trained_cnn5.model_pt, weights_only=True)  # safe format
    assert ck["classes"] == CLASSES and ck["config"]["settings"]["model"] == "cnn5"
    model = load_trained_model(trained_cnn5.model_pt).network
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    hist = pd.read_csv(trained_cnn5.metrics / "history.csv")
    assert hist.epoch.tolist() == [1, 2, 3]
    assert json.loads((trained_cnn5.metrics / "train.json").read_text())["best_epoch"] == m["best_epoch"]

    import mlflow

    mlflow.set_tracking_uri(trained_cnn5.params.mlflow.tracking_uri)
    run = mlflow.get_run(m["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "cnn5" and run.data.params["train.optimizer"] == "adam"
    assert run.data.tags["git_commit"] and run.data.tags["data_version"]
    client = mlflow.MlflowClient()
    assert [x.step for x in client.get_metric_history(run.info.run_id, "val/accuracy")] == [1, 2, 3]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "training_curve.png" in arts
    # the MLflow model of the run: logged by the register stage (serve.mlflow_models.logged_model_uri), once
    from lungxray.serve.mlflow_models import MODEL_URI_TAG, logged_model_uri

    assert mlflow.get_run(run.info.run_id).data.tags[MODEL_URI_TAG] == trained_cnn5.model_uri
    assert logged_model_uri(mlflow, run.info.run_id, [trained_cnn5.model_pt]) == trained_cnn5.model_uri
    logged = mlflow.pyfunc.load_model(trained_cnn5.model_uri, dst_path=str(tmp_path))
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)  # the logged model takes images
    out = logged.predict({"image": x})
    assert len(out) == 4 and (out.error == "").all()  # a batch, not only the example's size
    assert np.allclose(out.filter(like="prob_").sum(axis=1), 1.0)
    assert not any("KAGGLE" in k.upper() for k in run.data.params)


def test_the_training_run_records_the_processed_train_and_val_splits_as_its_dataset_inputs(trained_cnn5):
    import mlflow

    from lungxray.models.checkpoint import data_version

    client = mlflow.MlflowClient(trained_cnn5.params.mlflow.tracking_uri)
    inputs = client.get_run(trained_cnn5.train["mlflow_run_id"]).inputs.dataset_inputs
    contexts = {i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"] for i in inputs}
    assert contexts == {"processed/train": "training", "processed/val": "validation"}
    assert {i.dataset.digest for i in inputs} == {data_version(trained_cnn5.processed)}
    rows = {i.dataset.name: json.loads(i.dataset.profile)["num_rows"] for i in inputs}
    assert rows == {"processed/train": 60, "processed/val": 24}


def test_early_stopping(tmp_path, mlflow_env):
    processed = make_processed(tmp_path)
    p = params(tmp_path, epochs=30, lr=5.0, optimizer="sgd", early_stopping_patience=1,
               mlflow=MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/db.sqlite", artifact_dir=str(tmp_path / "a")))
    m = train_model("cnn5", p, processed, tmp_path / "m", tmp_path / "x", progress=False)
    assert m["stopped_early"] and m["epochs_run"] < 30


SCRIPT = """
import sys, json
from pathlib import Path
sys.path.insert(0, {tests!r})
from helpers.processed import train_params as params
from helpers.trained import copy_with_store
from lungxray.train.fit import train_model
tmp = Path({tmp!r})
train_model("cnn5", params(tmp, epochs=int(sys.argv[1]), weight_averaging="ema"), tmp / "processed", tmp / "models/cnn5",
            tmp / "metrics/cnn5")
"""


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_from_the_checkpoint(tmp_path, mlflow_env):
    make_processed(tmp_path, n_train=900, n_val=60, size=48)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), tmp=str(tmp_path)))
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, str(script), "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    ckpt = tmp_path / "models/cnn5/checkpoint.pt"
    deadline = time.monotonic() + 300  # a bound on waiting, not a speed assertion
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), proc.stdout.read().decode() if proc.poll() is not None else "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = torch.load(ckpt, weights_only=True)["epoch"]
    assert done < 2, "the run finished before it could be interrupted; make it longer"
    averaged = torch.load(ckpt, weights_only=True)["averaged"]  # the weight average is checkpointed with the weights
    assert int(averaged["n_averaged"]) == done * 57  # one EMA update per step: 900 images / 16
    assert not (tmp_path / "models/cnn5/model.pt").exists()  # no final model from a partial run
    assert not (tmp_path / "metrics/cnn5/train.json").exists()
    run_id = torch.load(ckpt, weights_only=True)["mlflow_run_id"]

    out = subprocess.run([sys.executable, str(script), "2"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resuming after epoch {done}" in out.stdout
    hist = pd.read_csv(tmp_path / "metrics/cnn5/history.csv")
    assert hist.epoch.tolist() == [1, 2] and hist.val_loss_avg.notna().all()
    metrics = json.loads((tmp_path / "metrics/cnn5/train.json").read_text())
    assert metrics["mlflow_run_id"] == run_id  # the same MLflow run continued
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == [1, 2]


def test_changed_settings_set_an_interrupted_checkpoint_aside_and_start_afresh(interrupted, tmp_path, mlflow_env,
                                                                                capsys):
    processed, _ = interrupted_after_one_epoch(interrupted, tmp_path)
    capsys.readouterr()
    train_model("cnn5", params(tmp_path, epochs=2, lr=1e-3), processed, tmp_path / "m", tmp_path / "x",
                progress=False)
    out = capsys.readouterr().out
    assert "set aside" in out and "settings" in out and "training from scratch" in out and "resuming" not in out
    assert pd.read_csv(tmp_path / "x/history.csv").epoch.tolist() == [1, 2]


def test_batches_cover_the_split_once_and_are_seeded():
    from lungxray.train.loop import ArrayBatches

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
    from lungxray.images.augment import AugmentParams, augment_batch

    img = torch.zeros(1, 1, 32, 32)
    img[..., :8, :] = 1.0  # bright band at the top (e.g. the clavicles)
    batch = img.repeat(16, 1, 1, 1)
    out = augment_batch(batch, AugmentParams(), torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and 0 <= out.min() and out.max() <= 1
    assert (out[..., :8, :].mean(dim=(1, 2, 3)) > out[..., -8:, :].mean(dim=(1, 2, 3))).all()  # top stays on top
    assert not torch.equal(out[0], out[1])  # per-image random parameters
    off = AugmentParams(degrees=0, translate=0, scale=(1.0, 1.0), brightness=0, contrast=0)
    assert torch.allclose(augment_batch(batch, off), batch, atol=1e-5)


# -------------------------------------------------------------------------------------------------- never a stale model


def test_a_finished_run_is_never_resumed_a_rerun_trains_from_scratch(trained_cnn5, tmp_path, mlflow_env, capsys):
    run = trained_cnn5.copy(tmp_path / "run")  # a finished run of 3 epochs
    assert torch.load(run.models / "checkpoint.pt", weights_only=True)["complete"] is True
    capsys.readouterr()
    second = train_model("cnn5", run.params, run.processed, run.models, run.metrics, progress=False)
    out = capsys.readouterr().out
    assert "finished run" in out and "training from scratch" in out and "resuming" not in out
    assert all(f"epoch {e}/3" in out for e in (1, 2, 3))  # every epoch trained again, not zero
    assert second["mlflow_run_id"] != run.train["mlflow_run_id"]  # a new MLflow run, not the old one re-exported
    assert pd.read_csv(run.metrics / "history.csv").epoch.tolist() == [1, 2, 3]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A folder holding cnn5 (2 epochs) stopped after its first epoch, as on Ctrl-C (its checkpoint holds epoch 1),
    its data and its MLflow store: rerun it in a copy (:func:`interrupted_after_one_epoch`)."""
    root = tmp_path_factory.mktemp("interrupted")
    processed = make_processed(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        interrupt_after_epochs(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            train_model("cnn5", params(root, epochs=2), processed, root / "m", root / "x", progress=False)
    assert torch.load(root / "m/checkpoint.pt", weights_only=True)["epoch"] == 1
    return root


def interrupted_after_one_epoch(interrupted: Path, tmp_path: Path) -> tuple[Path, TrainParams]:
    """A copy of ``interrupted`` in ``tmp_path`` (checkpoint in m/, metrics in x/): its data and its settings."""
    copy_with_store(interrupted, tmp_path)
    return tmp_path / "processed", params(tmp_path, epochs=2)


def test_a_code_change_trains_from_scratch_instead_of_resuming(interrupted, tmp_path, mlflow_env, monkeypatch,
                                                              capsys):
    import lungxray.models.checkpoint as checkpoint

    processed, p = interrupted_after_one_epoch(interrupted, tmp_path)
    monkeypatch.setattr(checkpoint, "code_fingerprint", lambda *a, **k: "edited-train-or-models-code")
    capsys.readouterr()
    train_model("cnn5", p, processed, tmp_path / "m", tmp_path / "x", progress=False)
    out = capsys.readouterr().out
    assert "resuming" not in out and "epoch 1/2" in out
    assert "set aside" in out and "code" in out and "training from scratch" in out
    assert (tmp_path / "m/checkpoint.stale.pt").exists()
    assert pd.read_csv(tmp_path / "x/history.csv").epoch.tolist() == [1, 2]


def test_a_library_upgrade_trains_from_scratch_instead_of_resuming(interrupted, tmp_path, mlflow_env, monkeypatch,
                                                                  capsys):
    import lungxray.models.checkpoint as checkpoint

    processed, p = interrupted_after_one_epoch(interrupted, tmp_path)
    versions = checkpoint.library_versions()
    monkeypatch.setattr(checkpoint, "library_versions", lambda: {**versions, "timm": "999.0"})
    capsys.readouterr()
    train_model("cnn5", p, processed, tmp_path / "m", tmp_path / "x", progress=False)
    out = capsys.readouterr().out
    assert "resuming" not in out and "epoch 1/2" in out and "library versions" in out


def test_a_checkpoint_whose_weights_do_not_fit_the_model_is_set_aside_without_a_traceback(interrupted, tmp_path,
                                                                                          mlflow_env, monkeypatch,
                                                                                          capsys):
    """The architecture changed in a way no fingerprint saw (e.g. inside a library): one line, then a fresh start."""
    import lungxray.models.architectures as models

    processed, p = interrupted_after_one_epoch(interrupted, tmp_path)
    real = models.create_model
    monkeypatch.setattr(models, "create_model", lambda name, num_classes, **kw: real(name, num_classes,
                                                                                      **{**kw, "head": "seed"}))
    capsys.readouterr()
    m = train_model("cnn5", p, processed, tmp_path / "m", tmp_path / "x", progress=False)
    out = capsys.readouterr().out
    assert "set aside" in out and "do not fit" in out and "resuming" not in out
    assert m["epochs_run"] == 2 and (tmp_path / "m/checkpoint.stale.pt").exists()


def test_an_unreadable_checkpoint_is_set_aside(tmp_path, mlflow_env, capsys):
    processed = make_processed(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m/checkpoint.pt").write_bytes(b"not a checkpoint")
    train_model("cnn5", params(tmp_path, epochs=1), processed, tmp_path / "m", tmp_path / "x", progress=False)
    out = capsys.readouterr().out
    assert "set aside" in out and "unreadable" in out
    assert (tmp_path / "m/checkpoint.stale.pt").read_bytes() == b"not a checkpoint"
    assert torch.load(tmp_path / "m/checkpoint.pt", weights_only=True)["complete"] is True



def test_a_model_file_that_no_longer_fits_the_model_code_is_a_clear_error(tmp_path):
    from lungxray.core.errors import LungxrayError
    from lungxray.models.architectures import create_model

    path = tmp_path / "model.pt"
    torch.save({"name": "cnn5", "classes": CLASSES, "config": {"settings": {"freeze": 0, "head": "linear"}},
                "model": create_model("cnn8", 3).state_dict()}, path)  # as if cnn5's architecture had changed
    with pytest.raises(LungxrayError, match=r"does not fit the current code of model cnn5.*dvc repro train@cnn5"):
        load_trained_model(path)
    path.write_bytes(b"truncated")
    with pytest.raises(LungxrayError, match="unreadable"):
        load_trained_model(path)

ARCH_SCRIPT = """
import sys
from pathlib import Path
from lungxray.core.tracking import MlflowParams
from lungxray.train.fit import train_model
from lungxray.train.settings import TrainParams
tmp = Path(sys.argv[1])
p = TrainParams(models=["cnn5"], epochs=1, batch_size=16, pretrained=False,
                mlflow=MlflowParams(tracking_uri=f"sqlite:///{tmp}/db.sqlite", artifact_dir=str(tmp / "a")))
train_model("cnn5", p, tmp / "processed", tmp / "models/cnn5", tmp / "metrics/cnn5")
"""


@pytest.mark.slow
def test_an_architecture_change_then_rerun_trains_the_new_model_without_a_traceback(tmp_path):
    """A scratch copy of the package: train, edit cnn5's first layer in handcrafted.py, rerun (as `dvc repro` would)."""
    make_processed(tmp_path, n_train=30, n_val=12)
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "lungxray", src / "lungxray", ignore=shutil.ignore_patterns("__pycache__"))
    script = tmp_path / "run.py"
    script.write_text(ARCH_SCRIPT)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(src)}
    env.pop("MLFLOW_TRACKING_URI", None)

    def run():
        return subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True)

    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    models_py = src / "lungxray/models/handcrafted.py"
    text = models_py.read_text()
    assert "(32, 64, 128, 256, 512), (5, 5, 3, 3, 3)" in text
    models_py.write_text(text.replace("(32, 64, 128, 256, 512), (5, 5, 3, 3, 3)", "(16, 64, 128, 256, 512), "
                                                                                  "(5, 5, 3, 3, 3)"))
    second = run()
    assert second.returncode == 0 and "Traceback" not in second.stderr, second.stdout + second.stderr
    assert "epoch 1/1" in second.stdout  # trained again, not re-exported
    weights = torch.load(tmp_path / "models/cnn5/model.pt", weights_only=True)["model"]
    assert weights["features.0.weight"].shape[0] == 16  # the new architecture's weights


def test_each_model_is_fingerprinted_by_its_own_resolved_settings_only():
    from lungxray.train.settings import resolved_settings

    base = dict(models=["cnn5", "resnet18"], model_options={"cnn5": {"lr": 1e-3}, "resnet18": {"freeze": 2}})

    def cnn5(**change):
        return resolved_settings(TrainParams(**{**base, **change}), "cnn5")

    before = cnn5()
    assert cnn5(model_options={"cnn5": {"lr": 1e-3}, "resnet18": {"freeze": 0}}) == before  # another model's options
    assert cnn5(models=["cnn5", "resnet18", "vgg16"]) == before  # a model added
    assert cnn5(model_options={"cnn5": {"lr": 2e-3}}) != before  # its own options
    assert cnn5(weight_decay=0.5) != before  # a shared key
    assert before["lr"] == 1e-3 and before["optimizer"] == "adam" and "model_options" not in before


# ------------------------------------------------------------------------------------------ transfer learning as seeded


def test_default_params_freeze_the_imagenet_bases_of_vgg16_mobilenetv2_and_inception_resnet_v2():
    """Seed 003 trained only the heads of these three; seed 002 froze the first ResNet blocks."""
    from lungxray.core.config import load_section
    from lungxray.models.architectures import count_parameters, create_model
    from lungxray.train.settings import TrainParams

    p = load_section("train", TrainParams, REPO / "params.yaml")
    for name in ("vgg16", "mobilenetv2", "inception_resnet_v2"):
        s = model_settings(p, name)
        assert s.pretrained and s.freeze == "backbone", name
        model = create_model(name, num_classes=5, pretrained=False, freeze=s.freeze, head=s.head)
        head = model.get_classifier()
        trainable, total = count_parameters(model)
        assert trainable == sum(q.numel() for q in head.parameters()) < total / 100, name
        assert all(q.requires_grad for q in head.parameters())
    for name in ("resnet18", "resnet34"):
        s = model_settings(p, name)
        assert s.freeze == 2, name
        model = create_model(name, num_classes=5, pretrained=False, freeze=s.freeze, head=s.head)
        frozen = {n.split(".")[0] for n, q in model.named_parameters() if not q.requires_grad}
        assert frozen == {"conv1", "bn1", "layer1", "layer2"}, name


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def test_a_pretrained_model_is_fed_and_ships_its_weights_normalisation(tmp_path, mlflow_env, monkeypatch):
    import lungxray.train.loop as train_loop
    from lungxray.models.architectures import create_model

    weights = tmp_path / "mobilenetv2.pth"  # a local ImageNet-shaped file, as from the hub (no internet in tests)
    torch.save(create_model("mobilenetv2", 1000).state_dict(), weights)
    processed = make_processed(tmp_path)
    seen = []
    real = train_loop.to_model_input
    monkeypatch.setattr(train_loop, "to_model_input", lambda x, device, mean, std, *a, **k: (
        seen.append((list(mean), list(std))), real(x, device, mean, std, *a, **k))[1])
    p = params(tmp_path, models=["mobilenetv2"], epochs=1, pretrained=True,
               model_options={"mobilenetv2": {"weights_file": str(weights), "freeze": "backbone"}})
    m = train_model("mobilenetv2", p, processed, tmp_path / "m", tmp_path / "x", progress=False)
    assert seen and all(s == (IMAGENET_MEAN, IMAGENET_STD) for s in seen)
    ck = torch.load(tmp_path / "m/model.pt", weights_only=True)
    assert ck["mean"] == pytest.approx(IMAGENET_MEAN) and ck["std"] == pytest.approx(IMAGENET_STD)
    assert ck["normalisation"] == "mobilenetv2_100.ra_in1k"
    model = create_model("mobilenetv2", 3, freeze="backbone")
    assert m["trainable_parameters"] == sum(q.numel() for q in model.get_classifier().parameters())

    import mlflow

    from lungxray.core.tracking import mlflow_setup
    from lungxray.serve.mlflow_models import logged_model_uri

    uri = logged_model_uri(mlflow_setup(p.mlflow), m["mlflow_run_id"], [tmp_path / "m/model.pt"])
    meta = mlflow.models.get_model_info(uri).metadata
    assert meta["mean"] == pytest.approx(IMAGENET_MEAN) and meta["std"] == pytest.approx(IMAGENET_STD)
    run = mlflow.get_run(m["mlflow_run_id"])
    assert run.data.metrics["params/trainable"] == m["trainable_parameters"]


def test_a_model_trained_from_scratch_is_fed_the_data_statistics_on_three_channels(trained_cnn5):
    stats = json.loads((trained_cnn5.processed / "stats.json").read_text())
    assert (stats["mean"], stats["std"]) == (0.4, 0.2)  # as make_processed writes them
    ck = torch.load(trained_cnn5.model_pt, weights_only=True)
    assert ck["mean"] == [0.4] * 3 and ck["std"] == [0.2] * 3 and ck["normalisation"] == "data"


def test_model_input_is_normalised_per_channel():
    from lungxray.models.inference import to_model_input

    x = torch.full((2, 1, 4, 4), 255, dtype=torch.uint8)
    out = to_model_input(x, torch.device("cpu"), IMAGENET_MEAN, IMAGENET_STD, channels_last=False)
    assert out.shape == (2, 3, 4, 4)
    for c in range(3):
        assert torch.allclose(out[:, c], torch.tensor((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
    grey = to_model_input(x, torch.device("cpu"), [0.4] * 3, [0.2] * 3, channels_last=True)
    assert torch.allclose(grey, torch.tensor(3.0)) and grey.shape == (2, 3, 4, 4)


# ------------------------------------------------------------------------------------------------------ a full disk


def test_a_full_disk_at_a_checkpoint_is_one_clear_error_and_the_mlflow_run_is_marked_failed(tmp_path, mlflow_env,
                                                                                             monkeypatch):
    """What `dvc repro train@cnn5` met with models/cnn5 on a full tmpfs: torch's `unexpected pos` at the second
    checkpoint. The error names the folder and its free space, no partial file stays, the first epoch's checkpoint
    does (a rerun resumes from it), and the MLflow run is FAILED, not left RUNNING or taken for an interruption."""
    import mlflow

    import lungxray.core.io
    from lungxray.core.errors import DiskFullError

    processed = make_processed(tmp_path)
    real_save, checkpoints = torch.save, []

    def save(obj, f, *a, **k):
        if Path(f).name.startswith(".checkpoint.pt."):
            checkpoints.append(f)
            if len(checkpoints) == 2:
                Path(f).write_bytes(b"PK" * 1000)  # the part written before the disk filled
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1703936 vs 1703832")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(lungxray.core.io, "free_bytes", lambda folder: 4_000)
    with pytest.raises(DiskFullError) as e:
        train_model("cnn5", params(tmp_path, epochs=3), processed, tmp_path / "models/cnn5", tmp_path / "metrics/cnn5",
                    progress=False)
    msg = str(e.value)
    assert f"no space left on the device to write {tmp_path / 'models/cnn5/checkpoint.pt'}" in msg
    assert f"kB free in {tmp_path / 'models/cnn5'} once the partial file is removed" in msg
    assert "\n" not in msg and "free space" in msg
    assert sorted(p.name for p in (tmp_path / "models/cnn5").iterdir()) == ["best.pt", "checkpoint.pt"]
    ck = torch.load(tmp_path / "models/cnn5/checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1
    assert mlflow.get_run(ck["mlflow_run_id"]).info.status == "FAILED"


def test_an_interrupted_run_is_killed_any_other_end_failed():
    from lungxray.core.errors import DiskFullError
    from lungxray.train.fit import run_status

    assert run_status(KeyboardInterrupt()) == run_status(SystemExit(143)) == "KILLED"
    assert run_status(DiskFullError("no space left")) == run_status(RuntimeError("bug")) == "FAILED"
