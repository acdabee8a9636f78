"""The train stage: one architecture on the preprocessed split, resumable, tracked in MLflow.

* Data comes from the preprocess stage's uint8 arrays (memory-mapped): no image is decoded during training. Light
  augmentation suited to X-rays (small affine, brightness/contrast; never vertical flips) runs on the tensors.
* CUDA with mixed precision and channels_last when a GPU is present, the CPU otherwise: the same command.
* A checkpoint is written atomically after every epoch (``models/<model>/checkpoint.pt``); rerunning an interrupted
  run (even after ``kill -9``) resumes from it when the model's settings, the data, the code and the library versions
  are unchanged, and continues the same MLflow run. A finished run marks its checkpoint complete: it is never
  resumed, a rerun trains from scratch. Unusable checkpoints are set aside (rules in :mod:`lungxray.checkpoint`).
  The best weights are kept in ``best.pt``; ``model.pt`` and ``metrics/<model>/train.json`` are written only when
  training has finished, so a partial run is never taken for a complete one.
* A model is fed per-channel ``mean``/``std``: its pretrained weights' normalisation, or the train split's statistics
  when trained from scratch (:func:`input_normalisation`); ``model.pt`` and the MLflow model carry them.
* Checkpoints hold only tensors and plain data (resolved config, class names) and load with
  ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator
from torch import nn

from . import checkpoint
from .augment import AugmentParams
from .config import Strict
from .errors import LungxrayError
from .inference import to_model_input
from .io import atomic_path, write_csv, write_json
from .plots import pyplot, save_png
from .preprocess import load_split, preprocess_record
from .tracking import MlflowParams, log_datasets, log_image_model, mlflow_setup


class ModelOptions(Strict):
    """Per-architecture overrides of the train section."""

    pretrained: bool | None = None
    weights_file: str | None = None
    weights_sha256: str | None = None
    freeze: int | Literal["backbone"] = 0
    head: Literal["linear", "seed"] = "linear"
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)


SEED_MODELS = ["cnn5", "cnn8", "cnn13", "resnet18", "resnet34", "vgg16", "mobilenetv2", "inception_resnet_v2",
               "efficientnetv2_s"]


class TrainParams(Strict):
    models: list[str] = Field(default_factory=lambda: list(SEED_MODELS), min_length=1)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["none", "cosine", "step", "plateau"] = "cosine"
    step_size: int = Field(5, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    early_stopping_patience: int = Field(5, ge=1, description="epochs without a better val loss before stopping")
    imbalance: Literal["weighted_loss", "weighted_sampler", "none"] = "weighted_loss"
    augment: AugmentParams = AugmentParams()
    pretrained: bool = True
    model_options: dict[str, ModelOptions] = Field(default_factory=dict)
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="mixed precision: auto = fp16 (with loss scaling) on CUDA, bf16 on CPUs with native bf16 "
                            "(AVX512-BF16/AMX), else fp32")
    channels_last: bool = Field(True, description="channels_last memory format (faster convolutions on GPU and "
                                                  "oneDNN CPUs)")
    torch_threads: int = Field(0, ge=0, description="CPU threads for torch; 0 = torch's default")
    mlflow: MlflowParams = MlflowParams()

    @model_validator(mode="after")
    def _known_models(self) -> "TrainParams":
        from .models import MODEL_NAMES

        unknown = [m for m in [*self.models, *self.model_options] if m not in MODEL_NAMES]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; valid: {', '.join(MODEL_NAMES)}")
        if len(set(self.models)) != len(self.models):
            raise ValueError("train.models lists a model twice")
        return self


# ---------------------------------------------------------------------------------------------------------------------
# data


class ArrayBatches:
    """Batches of a preprocessed split, read straight from the uint8 memmap (no per-item Python, no decoding).

    Yields ``(x, y)``: ``x`` uint8 ``(B, 1, S, S)``, ``y`` int64 ``(B,)``. ``order`` is "sequential", "shuffle" or
    "weighted" (sampling with replacement by ``weights``), drawn from ``generator`` so that an epoch's batches are the
    same whether or not the run was resumed.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, order: str = "sequential",
                 generator: torch.Generator | None = None, weights: torch.Tensor | None = None):
        self.images, self.labels, self.batch_size = images, np.asarray(labels, dtype=np.int64), batch_size
        n = len(self.labels)
        if order == "shuffle":
            self.index = torch.randperm(n, generator=generator).numpy()
        elif order == "weighted":
            self.index = torch.multinomial(weights.double(), n, replacement=True, generator=generator).numpy()
        else:
            self.index = np.arange(n)

    def __len__(self) -> int:
        return (len(self.index) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for start in range(0, len(self.index), self.batch_size):
            idx = self.index[start: start + self.batch_size]
            order = np.argsort(idx, kind="stable")  # read the memmap in file order, restore the drawn order after
            rows = np.empty((len(idx),) + self.images.shape[1:], dtype=np.uint8)
            rows[order] = self.images[idx[order]]
            yield torch.from_numpy(rows).unsqueeze(1), torch.from_numpy(self.labels[idx])


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (mean 1 over the classes present); absent classes get 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0)
    return torch.tensor(w, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise LungxrayError("train.device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def cpu_has_bf16() -> bool:
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((check and check()) or (amx and amx()))


def resolve_precision(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training (None = plain fp32)."""
    if setting == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if setting == "bf16" else torch.float16
    if setting == "fp16":
        raise LungxrayError("train.precision fp16 needs a CUDA GPU; on the CPU use bf16, auto or fp32")
    if setting == "bf16" or cpu_has_bf16():
        return torch.bfloat16
    return None


class ModelSettings(Strict):
    """How one model trains: the train section with its ``model_options`` applied (what :func:`model_settings` gives)."""

    model: str = Field(description="architecture name (a row of the models table)")
    pretrained: bool = Field(description="start from ImageNet weights")
    weights_file: str | None = Field(description="local ImageNet weights instead of the hub")
    weights_sha256: str | None = Field(description="expected checksum of weights_file")
    freeze: int | Literal["backbone"] = Field(description="frozen stages (0 = none) or the whole backbone")
    head: Literal["linear", "seed"] = Field(description="linear, or the seed head (dropout 0.2 -> 1024 ReLU)")
    lr: float = Field(description="learning rate")
    batch_size: int = Field(description="images per step")
    epochs: int = Field(description="maximum epochs (early stopping may end sooner)")


def model_settings(params: TrainParams, name: str) -> ModelSettings:
    """Resolved per-model settings (train section + model_options override)."""
    o = params.model_options.get(name, ModelOptions())
    return ModelSettings(model=name, pretrained=params.pretrained if o.pretrained is None else o.pretrained,
                         weights_file=o.weights_file, weights_sha256=o.weights_sha256, freeze=o.freeze, head=o.head,
                         lr=o.lr or params.lr, batch_size=o.batch_size or params.batch_size,
                         epochs=o.epochs or params.epochs)


RUN_KEYS = {"models", "model_options", "mlflow"}  # train keys that say which models run and where they are tracked


def resolved_settings(params: TrainParams, name: str) -> dict:
    """Everything that decides how ``name`` is trained: the shared train keys with its own ``model_options`` applied.

    Other models' options and the list of models are not part of it, so changing them neither retrains ``name``
    (``train@<name>`` depends on this, through :func:`settings_record`) nor changes its checkpoint fingerprint."""
    own = model_settings(params, name).model_dump(mode="json")
    return {**params.model_dump(mode="json", exclude=RUN_KEYS), **own}


def settings_record(params: TrainParams, name: str) -> dict:
    """What ``train@<name>`` depends on besides the data and the code (``models/settings/<name>.json``): its resolved
    settings, where it is tracked, and the library versions (a torch or timm upgrade retrains)."""
    return {"settings": resolved_settings(params, name), "mlflow": params.mlflow.model_dump(mode="json"),
            "libraries": checkpoint.library_versions()}


def input_normalisation(name: str, pretrained: bool, stats: dict) -> dict:
    """Per-channel ``mean``/``std`` a model is fed with, and where they come from (``source``).

    A model that starts from pretrained weights gets their normalisation (timm's pretrained config: ImageNet's for
    most, 0.5/0.5 for the TensorFlow ports); a model trained from scratch (or a handcrafted one from a weights file)
    gets the train split's grey-level mean/std, replicated to the 3 channels."""
    from .models import describe

    d = describe(name)
    if pretrained and d["mean"] is not None:
        return {"mean": [float(v) for v in d["mean"]], "std": [float(v) for v in d["std"]], "source": d["timm_name"]}
    return {"mean": [float(stats["mean"])] * 3, "std": [float(stats["std"])] * 3, "source": "data"}


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def data_version(processed: Path) -> str:
    h = hashlib.sha256()
    for name in ("index.csv", "stats.json"):
        h.update((processed / name).read_bytes())
    return h.hexdigest()[:16]


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v)
    return out


def build_optimizer(params: TrainParams, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise LungxrayError("the model has no trainable parameter (check model_options.freeze)")
    if params.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=lr, momentum=params.momentum, weight_decay=params.weight_decay)
    cls = torch.optim.AdamW if params.optimizer == "adamw" else torch.optim.Adam
    return cls(trainable, lr=lr, weight_decay=params.weight_decay)


def build_scheduler(params: TrainParams, opt: torch.optim.Optimizer, epochs: int):
    if params.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    if params.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=params.step_size, gamma=params.gamma)
    if params.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=params.gamma, patience=1)
    return None


def run_epoch(model: nn.Module, batches: ArrayBatches, device: torch.device, loss_fn: nn.Module,
              opt: torch.optim.Optimizer | None, amp: torch.dtype | None, channels_last: bool, mean: float, std: float,
              scaler=None, on_train_mode=None, augment: AugmentParams | None = None,
              generator: torch.Generator | None = None) -> tuple[float, float, int]:
    """One pass; trains when ``opt`` is given. Returns (mean loss, accuracy, images)."""
    training = opt is not None
    model.train(training)
    if training and on_train_mode is not None:
        on_train_mode(model)
    total_loss, correct, n = 0.0, 0, 0
    ctx = torch.enable_grad() if training else torch.inference_mode()
    with ctx:
        for x, y in batches:
            x = to_model_input(x, device, mean, std, channels_last, augment if training else None, generator)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(x)
                loss = loss_fn(logits.float(), y)
            if training:
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
            total_loss += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    return total_loss / max(n, 1), correct / max(n, 1), n


def curve_png(history: pd.DataFrame, title: str, path: Path) -> None:
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 3.8))
    for key, ax in (("loss", axes[0]), ("accuracy", axes[1])):
        ax.plot(history.epoch, history[f"train_{key}"], "o-", label="train")
        ax.plot(history.epoch, history[f"val_{key}"], "s-", label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path, dpi=110)


# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Setup:
    """What stays fixed while one model trains."""

    name: str
    params: TrainParams
    settings: ModelSettings
    resolved: dict  # the record kept in checkpoints and model.pt
    fingerprints: dict  # settings, data, code, libraries: see lungxray.checkpoint
    norm: dict  # input_normalisation()
    device: torch.device
    amp: torch.dtype | None
    out_dir: Path
    metrics_dir: Path

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"


@dataclass
class _Run:
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


def train_model(name: str, params: TrainParams, processed: Path, out_dir: Path, metrics_dir: Path,
                progress: bool = True, extra_params: dict | None = None) -> dict:
    """Train ``name``: build, resume (only an unfinished checkpoint of the same settings, data, code and libraries),
    fit, finalise. Returns the final metrics."""
    from .models import count_parameters

    processed = Path(processed)
    stats = json.loads((processed / "stats.json").read_text())
    settings = model_settings(params, name)
    resolved = {"settings": settings.model_dump(mode="json"), "train": params.model_dump(mode="json"), "data": {
        "image_size": stats["image_size"], "mean": stats["mean"], "std": stats["std"], "classes": stats["classes"],
        "version": data_version(processed)}, "preprocess": preprocess_record(stats),
        **({"extra": extra_params} if extra_params else {})}
    fingerprints = {"settings": fingerprint(resolved_settings(params, name)), "data": fingerprint(resolved["data"]),
                    "code": checkpoint.code_fingerprint(), "libraries": fingerprint(checkpoint.library_versions())}
    device = resolve_device(params.device)
    setup = _Setup(name, params, settings, resolved, fingerprints, input_normalisation(name, settings.pretrained,
                   stats), device, resolve_precision(params.precision, device), Path(out_dir), Path(metrics_dir))
    if params.torch_threads:
        torch.set_num_threads(params.torch_threads)
    data = {split: load_split(processed, split) for split in ("train", "val")}
    if len(data["val"][1]) == 0:
        raise LungxrayError("the val split is empty: early stopping and model selection need one (split.ratios)")

    setup.out_dir.mkdir(parents=True, exist_ok=True)
    run = _resume(setup)
    if run.start_epoch == 1:  # a new run: nothing an earlier run left may be taken for its result
        for old in (setup.out_dir / "model.pt", setup.out_dir / "best.pt", setup.metrics_dir / "train.json"):
            old.unlink(missing_ok=True)
    trainable, total = count_parameters(run.model)

    # ---- mlflow run (continued on resume)
    mlflow = mlflow_setup(params.mlflow)
    if run.run_id is not None:
        try:
            mlflow.get_run(run.run_id)
        except Exception:
            run.run_id = None
    run.run_id = mlflow.start_run(run_id=run.run_id, run_name=None if run.run_id else name).info.run_id
    try:
        if run.start_epoch == 1:
            mlflow.log_params(flatten({"model": name, **settings.model_dump(mode="json"), "train": params.model_dump(mode="json"),
                                       "data": resolved["data"], **({"extra": extra_params} if extra_params else {})}))
            mlflow.set_tags({"model": name, "git_commit": git_commit(), "data_version": resolved["data"]["version"],
                             "device": device.type, "precision": str(setup.amp or torch.float32).removeprefix("torch."),
                             "channels_last": str(params.channels_last), "stage": "train"})
            mlflow.log_metrics({"params/trainable": trainable, "params/total": total})
            log_datasets(mlflow, processed, resolved["data"]["version"])
        stopped_early = _fit(setup, run, data, mlflow)
        metrics = _finalise(setup, run, stopped_early, trainable, total, mlflow)
        mlflow.end_run()
    except BaseException:
        mlflow.end_run(status="KILLED")
        raise
    return metrics


def _build(setup: _Setup) -> _Run:
    """A fresh model (seeded: the same initial weights every time) with its optimiser, schedule and loss scaler."""
    from . import models

    s, params = setup.settings, setup.params
    seed_everything(params.seed)
    model = models.create_model(setup.name, num_classes=len(setup.resolved["data"]["classes"]),
                                pretrained=s.pretrained, freeze=s.freeze, head=s.head,
                                weights_file=s.weights_file, weights_sha256=s.weights_sha256)
    model.to(setup.device)
    if params.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(params, model, s.lr)
    return _Run(model, opt, build_scheduler(params, opt, s.epochs),
                torch.amp.GradScaler("cuda") if setup.amp == torch.float16 else None)


def _resume(setup: _Setup) -> _Run:
    """The run to continue from the checkpoint when :func:`checkpoint.read_checkpoint` allows it, else a fresh one."""
    run = _build(setup)
    ck, message = checkpoint.read_checkpoint(setup.ckpt_path, setup.fingerprints)
    if message:
        print(f"[{setup.name}] {message}", flush=True)
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
    except Exception as e:  # noqa: BLE001 - an unusable checkpoint is set aside, never a traceback
        reason = " ".join(str(e).split())[:200]
        print(f"[{setup.name}] " + checkpoint.set_aside(setup.ckpt_path, f"its weights do not fit the model: {reason}"),
              flush=True)
        return _build(setup)  # the failed load may have changed part of the weights
    print(f"[{setup.name}] resuming after epoch {ck['epoch']} from {setup.ckpt_path}", flush=True)
    return run


def _fit(setup: _Setup, run: _Run, data: dict, mlflow) -> bool:
    """Train from ``run.start_epoch``; checkpoint every epoch, keep the best in best.pt. Returns whether early
    stopping ended it."""
    from .models import apply_freeze  # frozen BatchNorm layers keep their ImageNet statistics in train mode

    params, device, amp, channels_last = setup.params, setup.device, setup.amp, setup.params.channels_last
    (x_train, y_train), (x_val, y_val) = data["train"], data["val"]
    weights = class_weights(y_train, len(setup.resolved["data"]["classes"]))
    loss_fn = nn.CrossEntropyLoss(weight=weights.to(device) if params.imbalance == "weighted_loss" else None)
    eval_loss = nn.CrossEntropyLoss()
    mean, std = setup.norm["mean"], setup.norm["std"]
    bs, epochs = setup.settings.batch_size, setup.settings.epochs
    for epoch in range(run.start_epoch, epochs + 1):
        if run.bad_epochs >= params.early_stopping_patience:
            return True
        seed_everything(params.seed + epoch)  # same batches whether or not the run was resumed
        g = torch.Generator().manual_seed(params.seed + epoch)
        if params.imbalance == "weighted_sampler":
            train_batches = ArrayBatches(x_train, y_train, bs, "weighted", g, weights[torch.from_numpy(y_train)])
        else:
            train_batches = ArrayBatches(x_train, y_train, bs, "shuffle", g)
        t0 = time.perf_counter()
        tr_loss, tr_acc, n_tr = run_epoch(run.model, train_batches, device, loss_fn, run.opt, amp, channels_last, mean,
                                          std, run.scaler, apply_freeze, params.augment, g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t0
        va_loss, va_acc, _ = run_epoch(run.model, ArrayBatches(x_val, y_val, bs), device, eval_loss, None, amp,
                                       channels_last, mean, std)
        epoch_s = time.perf_counter() - t0
        lr = run.opt.param_groups[0]["lr"]
        if isinstance(run.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            run.sched.step(va_loss)
        elif run.sched is not None:
            run.sched.step()
        row = {"epoch": epoch, "train_loss": tr_loss, "train_accuracy": tr_acc, "val_loss": va_loss,
               "val_accuracy": va_acc, "lr": lr, "epoch_seconds": epoch_s,
               "train_images_per_s": n_tr / max(train_s, 1e-9)}
        run.history.append(row)
        improved = va_loss < run.best["val_loss"]
        if improved:
            run.best, run.bad_epochs = {"val_loss": va_loss, "val_accuracy": va_acc, "epoch": epoch}, 0
            with atomic_path(setup.out_dir / "best.pt") as tmp:
                torch.save({"model": run.model.state_dict(), "epoch": epoch}, tmp)
        else:
            run.bad_epochs += 1
        mlflow.log_metrics({"train/loss": tr_loss, "train/accuracy": tr_acc, "val/loss": va_loss,
                            "val/accuracy": va_acc, "lr": lr, "epoch_seconds": epoch_s,
                            "train/images_per_s": row["train_images_per_s"]}, step=epoch)
        _save_checkpoint(setup, run, epoch)
        print(f"[{setup.name}] epoch {epoch}/{epochs}: train loss {tr_loss:.4f} acc {tr_acc:.3f} | val loss "
              f"{va_loss:.4f} acc {va_acc:.3f} | {epoch_s:.1f}s ({row['train_images_per_s']:.0f} img/s)"
              + (" *" if improved else ""), flush=True)
    return run.bad_epochs >= params.early_stopping_patience


def _save_checkpoint(setup: _Setup, run: _Run, epoch: int) -> None:
    with atomic_path(setup.ckpt_path) as tmp:
        torch.save({"fingerprints": setup.fingerprints, "epoch": epoch, "model": run.model.state_dict(),
                    "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict() if run.sched else None,
                    "scaler": run.scaler.state_dict() if run.scaler else None, "history": run.history,
                    "best": run.best, "bad_epochs": run.bad_epochs, "mlflow_run_id": run.run_id,
                    "classes": setup.resolved["data"]["classes"], "config": setup.resolved, "mean": setup.norm["mean"],
                    "std": setup.norm["std"], "normalisation": setup.norm["source"]}, tmp)


def _finalise(setup: _Setup, run: _Run, stopped_early: bool, trainable: int, total: int, mlflow) -> dict:
    """The best epoch's weights as model.pt (with everything needed to use them), the history, the curve, train.json,
    the MLflow model; then the checkpoint is marked complete. Returns the final metrics."""
    name, best, classes, model = setup.name, run.best, setup.resolved["data"]["classes"], run.model
    if not (setup.out_dir / "best.pt").exists():
        raise LungxrayError(f"{name}: no epoch reached a finite validation loss, so there is no model to keep; lower "
                            f"the learning rate (train.lr or train.model_options.{name}.lr)")
    best_state = torch.load(setup.out_dir / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(best_state["model"])
    image_size = setup.resolved["data"]["image_size"]
    final = {"model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
             "name": name, "classes": classes, "config": setup.resolved, "image_size": image_size,
             "mean": setup.norm["mean"], "std": setup.norm["std"], "normalisation": setup.norm["source"],
             "preprocess": setup.resolved["preprocess"], "fingerprints": setup.fingerprints,
             "best_epoch": best["epoch"]}
    hist_df = pd.DataFrame(run.history)
    secs = float(hist_df.epoch_seconds.mean())
    metrics = {"model": name, "best_val_loss": best["val_loss"], "best_val_accuracy": best["val_accuracy"],
               "best_epoch": best["epoch"], "epochs_run": int(hist_df.epoch.max()),
               "epochs_to_converge": best["epoch"], "stopped_early": bool(stopped_early),
               "seconds_per_epoch": secs, "train_images_per_s": float(hist_df.train_images_per_s.mean()),
               "trainable_parameters": trainable, "total_parameters": total, "device": setup.device.type,
               "precision": str(setup.amp or torch.float32).removeprefix("torch."),
               "mlflow_run_id": run.run_id}
    setup.metrics_dir.mkdir(parents=True, exist_ok=True)
    write_csv(setup.metrics_dir / "history.csv", hist_df)
    curve = setup.metrics_dir / "training_curve.png"
    curve_png(hist_df, f"{name}: best val loss {best['val_loss']:.4f} at epoch {best['epoch']}", curve)
    mlflow.log_artifact(str(curve))
    mlflow.log_metrics({"best/val_loss": best["val_loss"], "best/val_accuracy": best["val_accuracy"],
                        "best/epoch": best["epoch"], "seconds_per_epoch": secs})
    model_uri = None
    if setup.params.mlflow.log_model:
        model_uri = log_image_model(mlflow, final).model_uri
    with atomic_path(setup.out_dir / "model.pt") as tmp:
        torch.save(final, tmp)
    metrics["mlflow_model_uri"] = model_uri
    write_json(setup.metrics_dir / "train.json", metrics)
    checkpoint.mark_complete(setup.ckpt_path, setup.fingerprints, {
        "epoch": int(hist_df.epoch.max()), "best": best, "history": run.history, "mlflow_run_id": run.run_id})
    return metrics


