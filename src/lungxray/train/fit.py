"""The train stage: one architecture on the preprocessed split, resumable, tracked in MLflow.

:func:`train_model` builds, resumes, fits and finalises; the settings live in :mod:`lungxray.train.settings`, the
parts of the loop (batches, device, precision, optimiser, one epoch) in :mod:`lungxray.train.loop`, the run's state
and its checkpoint (build, resume, save) in :mod:`lungxray.train.state`.

* Data comes from the preprocess stage's uint8 arrays (memory-mapped): no image is decoded during training. Light
  augmentation suited to X-rays (small affine, brightness/contrast; never vertical flips) runs on the tensors.
* CUDA with mixed precision and channels_last when a GPU is present, the CPU otherwise: the same command.
* Several processes (``train.nproc_per_node``, torchrun: :mod:`lungxray.train.distributed`): DistributedDataParallel,
  each process trains on its share of every global batch of ``batch_size`` and evaluates its share of the val split; the
  sums are added up, so every process takes the same decisions (best epoch, early stopping). Rank 0 alone prints,
  writes the checkpoint, ``best.pt``, ``model.pt`` and the metrics and logs to MLflow; the others wait for it at the
  end. On resume rank 0 reads the checkpoint and sends it to the others (no shared disk needed). Augmentation draws
  from a generator of its own per process; BatchNorm statistics are those of each process's share, rank 0's
  running statistics are kept (DistributedDataParallel's usual behaviour).
* A checkpoint is written atomically after every epoch (``models/<model>/checkpoint.pt``); rerunning an interrupted
  run (even after ``kill -9``) resumes from it when the model's settings, the data, the code and the library versions
  are unchanged, and continues the same MLflow run. A finished run marks its checkpoint complete: it is never
  resumed, a rerun trains from scratch (or, with ``reuse_finished``, keeps it when its fingerprints still match).
  Unusable checkpoints are set aside (rules in :mod:`lungxray.models.checkpoint`).
  The best weights are kept in ``best.pt``; ``model.pt`` and ``metrics/<model>/train.json`` are written only when
  training has finished, so a partial run is never taken for a complete one.
* A model is fed per-channel ``mean``/``std``: its pretrained weights' normalisation, or the train split's statistics
  when trained from scratch (:func:`input_normalisation`); ``model.pt`` (and so the MLflow model) carries them.
* Checkpoints hold only tensors and plain data (resolved config, class names) and load with
  ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from lungxray.core.device import resolve_device
from lungxray.core.errors import LungxrayError
from lungxray.core.io import atomic_path, write_csv, write_json
from lungxray.core.plots import curve_png
from lungxray.core.tracking import log_datasets, mlflow_setup
from lungxray.data.preprocess import load_split, preprocess_record
from lungxray.models import checkpoint
from lungxray.models.calibration import CalibrationParams, calibrate_model
from lungxray.models.checkpoint import data_version, fingerprint, git_commit
from lungxray.train.averaging import choose, plain_batches, score_average, weights_to_keep
from lungxray.train.distributed import World, close_world, init_world, wrap
from lungxray.train.loop import (
    ArrayBatches,
    Feed,
    class_weights,
    resolve_precision,
    run_epoch,
    seed_everything,
)
from lungxray.train.settings import TrainParams, model_settings, resolved_settings
from lungxray.train.state import Run, Setup, finished_metrics, resume_run, save_checkpoint


def input_normalisation(name: str, pretrained: bool, stats: dict) -> dict:
    """Per-channel ``mean``/``std`` a model is fed with, and where they come from (``source``).

    A model that starts from pretrained weights gets their normalisation (timm's pretrained config: ImageNet's for
    most, 0.5/0.5 for the TensorFlow ports); a model trained from scratch (or a handcrafted one from a weights file)
    gets the train split's grey-level mean/std, replicated to the 3 channels."""
    from lungxray.models.architectures import describe

    d = describe(name)
    if pretrained and d["mean"] is not None:
        return {"mean": [float(v) for v in d["mean"]], "std": [float(v) for v in d["std"]], "source": d["timm_name"]}
    return {"mean": [float(stats["mean"])] * 3, "std": [float(stats["std"])] * 3, "source": "data"}


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v)
    return out


# ---------------------------------------------------------------------------------------------------------------------


def train_model(name: str, params: TrainParams, processed: Path, out_dir: Path, metrics_dir: Path,
                progress: bool = True, extra_params: dict | None = None,
                calibration: CalibrationParams | None = None, reuse_finished: bool = False) -> dict:
    """Train ``name``: build, resume (only an unfinished checkpoint of the same settings, data, code and libraries),
    fit, finalise (with the temperature and operating points fitted on val: ``calibration``). Returns the final
    metrics (on every process when several train it).

    ``reuse_finished``: a finished run of the same fingerprints is kept as it is, not trained again (its
    ``train.json`` is returned; :func:`~lungxray.train.state.finished_metrics` says when). The external stage's fold
    models use it, so that a rerun after an interruption trains only what was not finished."""
    world = init_world(resolve_device(params.device))
    try:
        setup = _make_setup(name, params, Path(processed), out_dir, metrics_dir, extra_params, world)
        done = world.broadcast(finished_metrics(setup) if world.main else None) if reuse_finished else None
        if done is not None:
            if world.main:
                print(f"[{name}] reusing the finished model in {setup.out_dir} (same settings, data, code and "
                      f"library versions): not trained again", flush=True)
            return done
        return _train(setup, Path(processed), calibration)
    finally:
        close_world(world)


def _make_setup(name: str, params: TrainParams, processed: Path, out_dir: Path, metrics_dir: Path,
                extra_params: dict | None, world: World) -> Setup:
    stats = json.loads((processed / "stats.json").read_text())
    settings = model_settings(params, name)
    resolved = {"settings": settings.model_dump(mode="json"), "train": params.model_dump(mode="json"), "data": {
        "image_size": stats["image_size"], "mean": stats["mean"], "std": stats["std"], "classes": stats["classes"],
        "version": data_version(processed)}, "preprocess": preprocess_record(stats),
        **({"extra": extra_params} if extra_params else {})}
    fingerprints = {"settings": fingerprint(resolved_settings(params, name)), "data": fingerprint(resolved["data"]),
                    "code": checkpoint.code_fingerprint(), "libraries": fingerprint(checkpoint.library_versions())}
    return Setup(name, params, settings, resolved, fingerprints,
                 input_normalisation(settings.model, settings.pretrained, stats), world.device,
                 resolve_precision(params.precision, world.device), Path(out_dir), Path(metrics_dir), world)


def _train(setup: Setup, processed: Path, calibration: CalibrationParams | None) -> dict:
    from lungxray.models.architectures import count_parameters

    params, world = setup.params, setup.world
    if params.torch_threads:
        torch.set_num_threads(params.torch_threads)
    if setup.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size: pick the fastest convolution algorithms once
    world.local_batch(setup.settings.batch_size)  # the global batch must split evenly over the processes
    data = {split: load_split(processed, split) for split in ("train", "val")}
    if len(data["val"][1]) == 0:
        raise LungxrayError("the val split is empty: early stopping and model selection need one (split.ratios)")

    if world.main:
        setup.out_dir.mkdir(parents=True, exist_ok=True)
    run = resume_run(setup)
    if run.start_epoch == 1 and world.main:  # a new run: nothing an earlier run left may be taken for its result
        for old in (setup.out_dir / "model.pt", setup.out_dir / "best.pt", setup.metrics_dir / "train.json"):
            old.unlink(missing_ok=True)
    trainable, total = count_parameters(run.model)
    mlflow = _start_tracking(setup, run, processed, trainable, total) if world.main else None
    try:
        stopped_early = _fit(setup, run, data, mlflow)
        metrics = (_finalise(setup, run, stopped_early, trainable, total, mlflow, data["val"], calibration)
                   if world.main else None)
        world.barrier()  # the other processes wait while rank 0 writes model.pt and the metrics
        metrics = world.broadcast(metrics)
        if mlflow is not None:
            mlflow.end_run()
    except BaseException as e:
        if mlflow is not None:
            mlflow.end_run(status=run_status(e))
        raise
    return metrics


def run_status(err: BaseException) -> str:
    """How an MLflow run that ``err`` ended is marked: ``KILLED`` when it was interrupted (Ctrl-C, SIGTERM), else
    ``FAILED`` (a full disk, a bad setting, a bug): a rerun resumes it either way when its checkpoint allows."""
    return "KILLED" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "FAILED"


def _start_tracking(setup: Setup, run: Run, processed: Path, trainable: int, total: int):
    """The MLflow run (rank 0 only): the checkpoint's run continued on resume, else a new one with the params, tags
    and dataset inputs."""
    name, params, resolved = setup.name, setup.params, setup.resolved
    mlflow = mlflow_setup(params.mlflow)
    if run.run_id is not None:
        try:
            mlflow.get_run(run.run_id)
        except Exception:
            run.run_id = None
    run.run_id = mlflow.start_run(run_id=run.run_id, run_name=None if run.run_id else name).info.run_id
    try:
        if run.start_epoch == 1:
            extra = resolved.get("extra")
            mlflow.log_params(flatten({**setup.settings.model_dump(mode="json"), "model": name,
                                       "architecture": setup.settings.model,
                                       "train": params.model_dump(mode="json"), "data": resolved["data"],
                                       **({"extra": extra} if extra else {})}))
            mlflow.set_tags({"model": name, "git_commit": git_commit(), "data_version": resolved["data"]["version"],
                             "device": setup.device.type, "processes": str(setup.world.size),
                             "distributed_backend": setup.world.backend or "none",
                             "precision": str(setup.amp or torch.float32).removeprefix("torch."),
                             "channels_last": str(params.channels_last), "stage": "train"})
            mlflow.log_metrics({"params/trainable": trainable, "params/total": total})
            log_datasets(mlflow, processed, resolved["data"]["version"])
    except BaseException as e:
        mlflow.end_run(status=run_status(e))
        raise
    return mlflow


def _fit(setup: Setup, run: Run, data: dict, mlflow) -> bool:
    """Train from ``run.start_epoch``; checkpoint every epoch, keep the best in best.pt. Returns whether early
    stopping ended it."""
    feeding = _feeding(setup, run, data)
    for epoch in range(run.start_epoch, setup.settings.epochs + 1):
        if run.bad_epochs >= setup.params.early_stopping_patience:
            return True
        result = _epoch(setup, run, feeding, epoch)
        run.history.append(result.row)
        improved = _keep_if_best(setup, run, result)
        if setup.world.main:
            _report_epoch(setup, run, mlflow, result, improved)
    return run.bad_epochs >= setup.params.early_stopping_patience


@dataclass
class _Feeding:
    """What every epoch of one fit uses: the model that trains (``net``: DDP over several processes), the losses, the
    class weights, how batches are fed (``feed``) and sharded over the processes, and the two splits."""

    net: nn.Module
    feed: Feed
    loss_fn: nn.Module
    eval_loss: nn.Module
    weights: torch.Tensor
    shard: dict
    train: tuple
    val: tuple


@dataclass
class _EpochResult:
    """One epoch: its history row, the weights it offers (raw or averaged: :func:`choose`) and the averaged weights'
    val figures (empty without weight averaging)."""

    epoch: int
    row: dict
    cand: dict
    avg: dict


def _feeding(setup: Setup, run: Run, data: dict) -> _Feeding:
    """What the epochs of this fit share (:class:`_Feeding`)."""
    params, device, world = setup.params, setup.device, setup.world
    net = wrap(run.model, world)
    shard = {"rank": world.rank, "world": world.size, "pin_memory": device.type == "cuda"}
    y_train = data["train"][1]
    weights = class_weights(y_train, len(setup.resolved["data"]["classes"]))
    loss_fn = nn.CrossEntropyLoss(weight=weights.to(device) if params.imbalance == "weighted_loss" else None)
    eval_loss = nn.CrossEntropyLoss()
    feed = Feed(device, setup.norm["mean"], setup.norm["std"], setup.amp, params.channels_last, world)
    return _Feeding(net, feed, loss_fn, eval_loss, weights, shard, data["train"], data["val"])


def _epoch(setup: Setup, run: Run, f: _Feeding, epoch: int) -> _EpochResult:
    """Train one epoch, score it on val (and the averaged weights), step the schedule."""
    from lungxray.models.architectures import (
        apply_freeze,  # frozen BatchNorm layers keep their ImageNet statistics in train mode
    )

    params, device, world, shard = setup.params, setup.device, setup.world, f.shard
    (x_train, y_train), (x_val, y_val) = f.train, f.val
    bs, seed = setup.settings.batch_size, setup.settings.seed
    seed_everything(seed + epoch)  # same batches whether or not the run was resumed
    g = torch.Generator().manual_seed(seed + epoch)  # the same order in every process
    if params.imbalance == "weighted_sampler":
        train_batches = ArrayBatches(x_train, y_train, bs, "weighted", g, f.weights[torch.from_numpy(y_train)],
                                     **shard)
    else:
        train_batches = ArrayBatches(x_train, y_train, bs, "shuffle", g, **shard)
    if world.size > 1:  # each process its own augmentation draws
        g = torch.Generator().manual_seed((seed + epoch) * 65537 + world.rank)
    t0 = time.perf_counter()
    on_step = (lambda _net: run.averaged.after_step(run.model)) if run.averaged else None
    tr_loss, tr_acc, n_tr = run_epoch(f.net, train_batches, f.loss_fn, f.feed, run.opt, scaler=run.scaler,
                                      on_train_mode=apply_freeze, augment=params.augment, generator=g,
                                      on_step=on_step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    world.sync_buffers(run.model)  # rank 0's BatchNorm statistics everywhere: the model it saves is evaluated
    va_loss, va_acc, _ = run_epoch(run.model, ArrayBatches(x_val, y_val, bs, **shard), f.eval_loss, f.feed)
    avg = score_average(run.averaged, run.model, epoch, lambda: plain_batches(
        ArrayBatches(x_train, y_train, bs, **shard), device, setup.norm["mean"], setup.norm["std"],
        params.channels_last), lambda m: run_epoch(m, ArrayBatches(x_val, y_val, bs, **shard), f.eval_loss, f.feed))
    cand = choose((va_loss, va_acc), (avg["val_loss_avg"], avg["val_accuracy_avg"]) if avg else None,
                  params.weight_averaging)
    epoch_s = time.perf_counter() - t0
    lr = run.opt.param_groups[0]["lr"]
    if isinstance(run.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.sched.step(va_loss)
    elif run.sched is not None:
        run.sched.step()
    row = {"epoch": epoch, "train_loss": tr_loss, "train_accuracy": tr_acc, "val_loss": va_loss,
           "val_accuracy": va_acc, "lr": lr, "epoch_seconds": epoch_s,
           "train_images_per_s": n_tr / max(train_s, 1e-9), **avg}
    return _EpochResult(epoch, row, cand, avg)


def _keep_if_best(setup: Setup, run: Run, e: _EpochResult) -> bool:
    """Whether the epoch improved on the best val loss; if so its weights go to best.pt (rank 0), else one more bad
    epoch counts towards early stopping."""
    cand = e.cand
    improved = cand["val_loss"] < run.best["val_loss"]  # the same in every process: losses summed over all
    if improved:
        run.best, run.bad_epochs = {**cand, "epoch": e.epoch}, 0
        if setup.world.main:
            with atomic_path(setup.out_dir / "best.pt") as tmp:
                torch.save({"model": weights_to_keep(cand, run.model, run.averaged).state_dict(), "epoch": e.epoch,
                            "weights": cand["weights"]}, tmp)
    else:
        run.bad_epochs += 1
    return improved


def _report_epoch(setup: Setup, run: Run, mlflow, e: _EpochResult, improved: bool) -> None:
    """Rank 0: log the epoch to MLflow, write the checkpoint, print one line."""
    row, avg, epoch = e.row, e.avg, e.epoch
    tr_loss, tr_acc, va_loss, va_acc = row["train_loss"], row["train_accuracy"], row["val_loss"], row["val_accuracy"]
    epoch_s = row["epoch_seconds"]
    mlflow.log_metrics({"train/loss": tr_loss, "train/accuracy": tr_acc, "val/loss": va_loss,
                        "val/accuracy": va_acc, "lr": row["lr"], "epoch_seconds": epoch_s,
                        "train/images_per_s": row["train_images_per_s"],
                        **{f"val_avg/{k.split('_')[1]}": v for k, v in avg.items() if v == v}}, step=epoch)
    save_checkpoint(setup, run, epoch)
    print(f"[{setup.name}] epoch {epoch}/{setup.settings.epochs}: train loss {tr_loss:.4f} acc {tr_acc:.3f} | val "
          f"loss {va_loss:.4f} acc {va_acc:.3f} | {epoch_s:.1f}s ({row['train_images_per_s']:.0f} img/s)"
          + (f" | averaged val loss {avg['val_loss_avg']:.4f}" if avg else "")
          + (" *" if improved else "") + (" (averaged)" if improved and e.cand["weights"] != "raw" else ""),
          flush=True)


def _finalise(setup: Setup, run: Run, stopped_early: bool, trainable: int, total: int, mlflow, val: tuple,
              calibration: CalibrationParams | None) -> dict:
    """The best epoch's weights as model.pt (with everything needed to use them, and the temperature and operating
    points fitted on ``val``), the history, the curve, train.json (the pyfunc model is logged by the register
    stage); then the checkpoint is marked
    complete. Returns the final metrics (rank 0 alone)."""
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
             "best_epoch": best["epoch"], "weights": best.get("weights", "raw")}
    final.update(calibrate_model(model, *val, setup.norm["mean"], setup.norm["std"], classes, calibration,
                                 setup.device, setup.settings.batch_size))
    hist_df = pd.DataFrame(run.history)
    secs = float(hist_df.epoch_seconds.mean())
    metrics = {"model": name, "best_val_loss": best["val_loss"], "best_val_accuracy": best["val_accuracy"],
               "best_epoch": best["epoch"], "epochs_run": int(hist_df.epoch.max()),
               "epochs_to_converge": best["epoch"], "stopped_early": bool(stopped_early),
               "seconds_per_epoch": secs, "train_images_per_s": float(hist_df.train_images_per_s.mean()),
               "trainable_parameters": trainable, "total_parameters": total, "device": setup.device.type,
               "precision": str(setup.amp or torch.float32).removeprefix("torch."),
               "processes": setup.world.size, "distributed_backend": setup.world.backend,
               "mlflow_run_id": run.run_id, "temperature": final["temperature"],
               "kept_weights": best.get("weights", "raw")}
    setup.metrics_dir.mkdir(parents=True, exist_ok=True)
    write_csv(setup.metrics_dir / "history.csv", hist_df)
    curve = setup.metrics_dir / "training_curve.png"
    curve_png(hist_df, f"{name}: best val loss {best['val_loss']:.4f} at epoch {best['epoch']}", curve)
    mlflow.log_artifact(str(curve))
    mlflow.log_metrics({"best/val_loss": best["val_loss"], "best/val_accuracy": best["val_accuracy"],
                        "best/epoch": best["epoch"], "seconds_per_epoch": secs})
    with atomic_path(setup.out_dir / "model.pt") as tmp:
        torch.save(final, tmp)
    write_json(setup.metrics_dir / "train.json", metrics)
    checkpoint.mark_complete(setup.ckpt_path, setup.fingerprints, {
        "epoch": int(hist_df.epoch.max()), "best": best, "history": run.history, "mlflow_run_id": run.run_id})
    return metrics


