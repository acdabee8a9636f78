"""Training on several processes: torchrun + DistributedDataParallel on the CPU (gloo), 2 processes."""

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
import yaml

from lungxray.core.errors import LungxrayError
from lungxray.train.distributed import launch_command
from lungxray.train.loop import shard_batches

from conftest import REPO
from helpers.processed import make_processed

# ------------------------------------------------------------------------------------------------------ sharding, launch


@pytest.mark.parametrize("n", [60, 61, 63, 3])
def test_each_process_gets_its_share_of_every_global_batch_and_as_many_batches_as_the_others(n):
    index = np.random.default_rng(n).permutation(n)
    one = shard_batches(index, 16)
    two = [shard_batches(index, 16, rank, 2) for rank in (0, 1)]
    assert len(two[0]) == len(two[1]) == len(one) == -(-n // 16)  # the steps the global batch implies
    for k, whole in enumerate(one):
        joined = np.concatenate([two[0][k], two[1][k]])
        assert len(two[0][k]) == len(two[1][k])
        assert set(whole) <= set(joined)  # one process's step k, split between the two...
        assert len(joined) - len(whole) in (0, 1) and set(joined) - set(whole) <= {index[0]}  # ...padded by the first


def test_an_evaluation_pass_is_split_exactly_between_the_processes():
    index = np.arange(25)
    parts = [np.concatenate(shard_batches(index, 8, rank, 2, even=False)) for rank in (0, 1)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(25))


def test_one_process_is_not_relaunched_and_two_are_under_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LUNGXRAY_NPROC_PER_NODE", "LUNGXRAY_NNODES"):
        monkeypatch.delenv(var, raising=False)
    assert launch_command("stages/train.py", ["cnn5"], 1) is None
    cmd = launch_command("stages/train.py", ["cnn5"], 2)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=2"] and "--standalone" in cmd
    assert cmd[-2:] == ["stages/train.py", "cnn5"]
    monkeypatch.setenv("LUNGXRAY_NPROC_PER_NODE", "4")  # the environment wins over params.yaml
    assert "--nproc_per_node=4" in launch_command("stages/train.py", ["cnn5"], 1)
    monkeypatch.setenv("LUNGXRAY_NNODES", "2")
    with pytest.raises(LungxrayError, match="LUNGXRAY_RDZV_ENDPOINT"):
        launch_command("stages/train.py", ["cnn5"], 1)
    monkeypatch.setenv("LUNGXRAY_RDZV_ENDPOINT", "node0:29400")
    cmd = launch_command("stages/train.py", ["cnn5"], 1)
    assert {"--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=node0:29400"} <= set(cmd)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "3")  # already one of torchrun's processes: never launched again
    assert launch_command("stages/train.py", ["cnn5"], 2) is None


def test_one_process_under_torchrun_joins_a_process_group_and_trains_through_ddp(tmp_path):
    """Issue 19: on a machine with one GPU, ``torchrun --nproc_per_node=1`` must run the NCCL + DDP path the several-GPU
    machine runs (it was a world of one with no group, so that path never ran on one GPU). Here with gloo."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = """
import torch
from torch.nn.parallel import DistributedDataParallel
from lungxray.train.distributed import close_world, init_world, wrap
world = init_world(torch.device("cpu"))
net = wrap(torch.nn.Linear(2, 2), world)
print(world.group, world.size, world.backend, isinstance(net, DistributedDataParallel), world.sum([1.0, 2.0]).tolist())
close_world(world)
"""
    env = {**os.environ, "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[0] == "True 1 gloo True [1.0, 2.0]"
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")})
    assert p.returncode == 0 and p.stdout.split("\n")[0] == "False 1 None False [1.0, 2.0]", p.stderr


def test_a_global_batch_that_does_not_split_over_the_processes_is_a_clear_error():
    from lungxray.train.distributed import World

    with pytest.raises(LungxrayError, match="multiple of 2"):
        World(rank=0, size=2).local_batch(15)
    assert World(rank=1, size=2).local_batch(16) == 8


# ------------------------------------------------------------------------------------------------ the train stage, DDP


def stage_workdir(tmp: Path, nproc: int, **train) -> tuple[Path, dict]:
    """A scratch project: the repository's params.yaml with a small cnn5 run on ``nproc`` processes, tracked under
    ``tmp``, and a tiny processed set in data/processed. Returns (workdir, environment)."""
    work = tmp / f"work{nproc}"
    work.mkdir()
    make_processed(work / "data", **{k: train.pop(k) for k in ("n_train", "n_val", "size") if k in train})
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update({"models": ["cnn5"], "epochs": 2, "batch_size": 16, "lr": 3e-3, "model_options": {},
                            "pretrained": False, "augment": {"enabled": False}, "nproc_per_node": nproc,
                            "torch_threads": 1, "mlflow": {"tracking_uri": f"sqlite:///{work}/mlruns/mlflow.db",
                                                           "artifact_dir": str(work / "mlruns/artifacts")}, **train})
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    for var in ("MLFLOW_TRACKING_URI", "LUNGXRAY_NPROC_PER_NODE", "LUNGXRAY_NNODES", "WORLD_SIZE", "RANK"):
        env.pop(var, None)
    return work, env


def train_stage(work: Path, env: dict, **kw):
    return subprocess.run([sys.executable, str(REPO / "stages/train.py"), "cnn5"], cwd=work, env=env,
                          capture_output=True, text=True, **kw)


def mlflow_client(work: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{work}/mlruns/mlflow.db")


@pytest.mark.slow
def test_two_processes_train_one_model_with_one_mlflow_run_as_one_process_with_their_batch_halves_would(tmp_path):
    two, env = stage_workdir(tmp_path, 2, optimizer="sgd", lr=0.02, momentum=0.9, imbalance="none", precision="fp32")
    r = train_stage(two, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("train cnn5: best val loss") == 1 and r.stdout.count("epoch 1/2") == 1  # rank 0 prints

    client = mlflow_client(two)
    runs = client.search_runs([client.get_experiment_by_name("lungxray").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["processes"] == "2"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val/loss")] == [1, 2]  # one set, not two
    train_json = json.loads((two / "metrics/cnn5/train.json").read_text())
    assert train_json["mlflow_run_id"] == runs[0].info.run_id
    assert pd.read_csv(two / "metrics/cnn5/history.csv").epoch.tolist() == [1, 2]

    # The 1-process run of the same seed, data and global batches, each step's loss the mean over the two halves of
    # its batch (the images each process took): what DDP computes, BatchNorm statistics included (each process
    # normalises its 8 images by their own statistics). So the learned weights agree to float rounding (summation
    # order in the all-reduce): 1e-4 of the distance they moved. A run that skips, repeats or does not sync a
    # process's images is off by the order of that distance (an ordinary 1-process run, BatchNorm over all 16
    # images, was measured 0.37 away).
    reference = halves_reference(two, epochs=train_json["best_epoch"])
    trained = torch.load(two / "models/cnn5/model.pt", weights_only=True)["model"]
    start, ref, ddp = (learned(w) for w in (reference["start"], reference["end"], trained))
    assert float((ddp - ref).norm()) <= 1e-4 * float((ref - start).norm())


def learned(state: dict) -> torch.Tensor:
    return torch.cat([v.float().flatten() for k, v in sorted(state.items()) if v.is_floating_point()
                      and "running" not in k])


def halves_reference(work: Path, epochs: int) -> dict:
    """Train cnn5 in this process as the stage does (same settings, seeds and batches), each step on the two halves
    of its batch; returns the initial and final state dicts."""
    from torch import nn

    from lungxray.core.config import load_sections
    from lungxray.data.preprocess import load_split
    from lungxray.models import architectures as models
    from lungxray.models.inference import to_model_input
    from lungxray.train.loop import ArrayBatches, build_optimizer, build_scheduler, seed_everything
    from lungxray.train.settings import TrainParams

    p = load_sections({"train": TrainParams}, work / "params.yaml").train
    x, y = load_split(work / "data/processed", "train")
    seed_everything(p.seed)
    model = models.create_model("cnn5", num_classes=3, pretrained=False).to(memory_format=torch.channels_last)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(p, model, p.lr)
    sched, loss_fn = build_scheduler(p, opt, p.epochs), nn.CrossEntropyLoss()
    for epoch in range(1, epochs + 1):
        seed_everything(p.seed + epoch)
        model.train()
        for xb, yb in ArrayBatches(x, y, p.batch_size, "shuffle", torch.Generator().manual_seed(p.seed + epoch)):
            xb = to_model_input(xb, torch.device("cpu"), [0.4] * 3, [0.2] * 3, True)  # stats.json of the set
            halves = zip(xb.chunk(2), yb.chunk(2))
            loss = sum(loss_fn(model(xh), yh) for xh, yh in halves) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return {"start": start, "end": model.state_dict()}


@pytest.mark.slow
def test_kill_9_under_two_processes_then_rerun_resumes_from_rank_0s_checkpoint(tmp_path):
    work, env = stage_workdir(tmp_path, 2, n_train=900, n_val=60, size=48, epochs=4)
    proc = subprocess.Popen([sys.executable, str(REPO / "stages/train.py"), "cnn5"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    ckpt = work / "models/cnn5/checkpoint.pt"
    deadline = time.monotonic() + 600  # a bound on waiting, not a speed assertion
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), proc.stdout.read().decode() if proc.poll() is not None else "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher, torchrun's agent and both processes
    proc.wait()
    ck = torch.load(ckpt, weights_only=True)
    done, run_id = ck["epoch"], ck["mlflow_run_id"]
    assert done < 4, "the run finished before it could be interrupted; make it longer"
    steps = {int(s["step"]) for s in ck["optimizer"]["state"].values()}
    assert steps == {done * -(-900 // 16)}  # optimiser steps: those of the global batch of 16, not of 8 per process
    assert not (work / "models/cnn5/model.pt").exists() and not (work / "metrics/cnn5/train.json").exists()

    r = train_stage(work, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(f"resuming after epoch {done}") == 1
    assert pd.read_csv(work / "metrics/cnn5/history.csv").epoch.tolist() == [1, 2, 3, 4]
    assert json.loads((work / "metrics/cnn5/train.json").read_text())["mlflow_run_id"] == run_id  # continued
    history = mlflow_client(work).get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
