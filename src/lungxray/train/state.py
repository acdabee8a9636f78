"""What one training run holds (:class:`Setup`: fixed; :class:`Run`: the model and everything that moves): built
fresh (:func:`build_run`) or resumed from its checkpoint (:func:`resume_run`), the checkpoint written after every
epoch (:func:`save_checkpoint`), and the finished run that may stand for a new one (:func:`finished_metrics`). The
rules for when a checkpoint may be resumed are :mod:`lungxray.models.checkpoint`'s."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lungxray.core.io import atomic_path
from lungxray.models import checkpoint
from lungxray.train.averaging import build_average
from lungxray.train.distributed import World
from lungxray.train.loop import build_optimizer, build_scheduler, seed_everything
from lungxray.train.settings import ModelSettings, TrainParams
from lungxray.train.warmup import build_warmup_scheduler


@dataclass
class Setup:
    """What stays fixed while one model trains (built by :func:`lungxray.train.fit.train_model`)."""

    name: str
    params: TrainParams
    settings: ModelSettings
    resolved: dict  # the record kept in checkpoints and model.pt
    fingerprints: dict  # settings, data, code, libraries: see lungxray.models.checkpoint
    norm: dict  # input_normalisation()
    device: torch.device
    amp: torch.dtype | None
    out_dir: Path
    metrics_dir: Path
    world: World = field(default_factory=World)

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"


@dataclass
class Run:
    """The model and everything that moves while it trains: what a checkpoint holds and a resumed run continues."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: object
    scaler: object
    start_epoch: int = 1
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_loss": math.inf, "epoch": 0})
    bad_epochs: int = 0
    run_id: str | None = None
    averaged: object = None  # lungxray.train.averaging.WeightAverage when train.weight_averaging is set


def build_run(setup: Setup) -> Run:
    """A fresh model (seeded: the same initial weights every time) with its optimiser, schedule and loss scaler."""
    from lungxray.models import architectures as models

    s, params = setup.settings, setup.params
    seed_everything(s.seed)
    model = models.create_model(s.model, num_classes=len(setup.resolved["data"]["classes"]),
                                pretrained=s.pretrained, freeze=s.freeze, head=s.head,
                                weights_file=s.weights_file, weights_sha256=s.weights_sha256)
    model.to(setup.device)
    if params.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(params, model, s.lr)
    sched = (build_warmup_scheduler if params.warmup_epochs else build_scheduler)(params, opt, s.epochs)
    return Run(model, opt, sched, torch.amp.GradScaler("cuda") if setup.amp == torch.float16 else None,
                averaged=build_average(params, model))


def resume_run(setup: Setup) -> Run:
    """The run to continue from the checkpoint when :func:`checkpoint.read_checkpoint` allows it, else a fresh one.
    Rank 0 reads the checkpoint (and sets an unusable one aside) and sends it to the other processes."""
    run, world = build_run(setup), setup.world
    ck, message = checkpoint.read_checkpoint(setup.ckpt_path, setup.fingerprints) if world.main else (None, None)
    if message:
        print(f"[{setup.name}] {message}", flush=True)
    ck = world.broadcast(ck)
    if ck is None:
        return run
    try:
        run.model.load_state_dict(ck["model"])
        run.opt.load_state_dict(ck["optimizer"])
        if run.sched is not None and ck.get("scheduler"):
            run.sched.load_state_dict(ck["scheduler"])
        if run.scaler is not None and ck.get("scaler"):
            run.scaler.load_state_dict(ck["scaler"])
        run.start_epoch, run.history, run.best = ck["epoch"] + 1, ck["history"], ck["best"]
        run.bad_epochs, run.run_id = ck["bad_epochs"], ck.get("mlflow_run_id")
        if run.averaged is not None:
            run.averaged.load_state_dict(ck["averaged"])
    except Exception as e:  # noqa: BLE001 - an unusable checkpoint is set aside, never a traceback
        reason = " ".join(str(e).split())[:200]
        if world.main:
            print(f"[{setup.name}] " + checkpoint.set_aside(setup.ckpt_path,
                                                            f"its weights do not fit the model: {reason}"), flush=True)
        return build_run(setup)  # the failed load may have changed part of the weights
    if world.main:
        print(f"[{setup.name}] resuming after epoch {ck['epoch']} from {setup.ckpt_path}", flush=True)
    return run


def save_checkpoint(setup: Setup, run: Run, epoch: int) -> None:
    """Write ``checkpoint.pt`` (atomically) after ``epoch``: what :func:`resume_run` continues from."""
    with atomic_path(setup.ckpt_path) as tmp:
        torch.save({"fingerprints": setup.fingerprints, "epoch": epoch, "model": run.model.state_dict(),
                    "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict() if run.sched else None,
                    "scaler": run.scaler.state_dict() if run.scaler else None, "history": run.history,
                    "best": run.best, "bad_epochs": run.bad_epochs, "mlflow_run_id": run.run_id,
                    "averaged": run.averaged.state_dict() if run.averaged else None,
                    "classes": setup.resolved["data"]["classes"], "config": setup.resolved, "mean": setup.norm["mean"],
                    "std": setup.norm["std"], "normalisation": setup.norm["source"]}, tmp)


def finished_metrics(setup: Setup) -> dict | None:
    """The metrics of a finished run that may stand for this one, or None: its checkpoint is marked complete with the
    same fingerprints (:func:`checkpoint.finished_run`), its ``model.pt`` carries them too and its ``train.json``
    names the same MLflow run (a later run that was cut short may have removed or replaced either)."""
    record = checkpoint.finished_run(setup.ckpt_path, setup.fingerprints)
    model_file, metrics_file = setup.out_dir / "model.pt", setup.metrics_dir / "train.json"
    if record is None or not model_file.exists() or not metrics_file.exists():
        return None
    try:
        kept = torch.load(model_file, map_location="cpu", weights_only=True, mmap=True)
        metrics = json.loads(metrics_file.read_text())
    except Exception:  # noqa: BLE001 - an unreadable file is not reused: the model is trained again
        return None
    if not isinstance(kept, dict) or kept.get("fingerprints") != setup.fingerprints:
        return None
    return metrics if metrics.get("mlflow_run_id") == record.get("mlflow_run_id") else None
