"""Weight averaging for the train stage (``train.weight_averaging``): an EMA or SWA copy of the model, evaluated on val
every epoch beside the raw weights, checkpointed beside them, and kept as the model when it is the better on val.

* ``ema``: after every optimiser step, ``avg = decay * avg + (1 - decay) * weights`` (``train.ema_decay``;
  :func:`torch.optim.swa_utils.get_ema_multi_avg_fn`), starting from the first step's weights. The BatchNorm running
  statistics are averaged the same way (``use_buffers=True``, as timm's ``ModelEmaV2``): with a decay near 1 the
  average moves by a small step per batch, so the statistics of the recent models fit it, and no extra pass over the
  data is needed.
* ``swa``: from epoch ``train.swa_start`` on, the equal-weight mean of the end-of-epoch weights. Those weights lie
  far apart (a whole epoch of steps each), so no model's running statistics fit their mean: after each update the
  averaged copy's BatchNorm statistics are recomputed on the train split without augmentation
  (:func:`torch.optim.swa_utils.update_bn`).
* Selection: each epoch, the raw and the averaged weights are both scored on val (the same unweighted loss);
  ``best.pt`` holds whichever of all candidates so far had the lowest val loss, with ``weights`` = ``raw`` or the
  averaging kind; ``model.pt`` and ``train.json`` record it. Early stopping counts epochs without a better candidate.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn


class WeightAverage:
    """The averaged copy of a model and when it is updated (see the module docstring)."""

    def __init__(self, model: nn.Module, kind: str, ema_decay: float = 0.999, swa_start: int = 1):
        self.kind, self.swa_start = kind, swa_start
        if kind == "ema":
            self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        else:
            self.averaged = AveragedModel(model, use_buffers=False)

    @property
    def module(self) -> nn.Module:
        """The averaged weights as a plain model of the trained architecture."""
        return self.averaged.module

    def ready(self) -> bool:
        """Whether anything has been averaged yet."""
        return int(self.averaged.n_averaged) > 0

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimiser step: the EMA update."""
        if self.kind == "ema":
            self.averaged.update_parameters(model)

    def end_epoch(self, model: nn.Module, epoch: int, train_inputs) -> None:
        """Called after an epoch's training: the SWA update and its BatchNorm statistics (``train_inputs``: a
        callable giving an iterable of normalised, unaugmented train batches)."""
        if self.kind == "swa" and epoch >= self.swa_start:
            self.averaged.update_parameters(model)
            update_bn(train_inputs(), self.averaged.module)

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state)


def build_average(params, model: nn.Module) -> WeightAverage | None:
    """The averager that ``params.weight_averaging`` asks for (``None`` for ``none``)."""
    if params.weight_averaging == "none":
        return None
    return WeightAverage(model, params.weight_averaging, params.ema_decay, params.swa_start)


def choose(raw: tuple[float, float], averaged: tuple[float, float] | None, kind: str) -> dict:
    """This epoch's candidate: the raw or the averaged weights, whichever has the lower val loss (raw on a tie).
    ``raw`` and ``averaged`` are (val loss, val accuracy)."""
    if averaged is not None and math.isfinite(averaged[0]) and averaged[0] < raw[0]:
        return {"val_loss": averaged[0], "val_accuracy": averaged[1], "weights": kind}
    return {"val_loss": raw[0], "val_accuracy": raw[1], "weights": "raw"}


def score_average(avg: WeightAverage | None, model: nn.Module, epoch: int, train_inputs, val_pass) -> dict:
    """After an epoch's training: update the average where due and score it on val (``val_pass(module)`` ->
    (loss, accuracy, n)). Returns the history columns (``val_loss_avg``, ``val_accuracy_avg``; NaN before SWA starts),
    empty without averaging."""
    if avg is None:
        return {}
    avg.end_epoch(model, epoch, train_inputs)
    loss, acc = (val_pass(avg.module)[:2]) if avg.ready() else (math.nan, math.nan)
    return {"val_loss_avg": loss, "val_accuracy_avg": acc}


def plain_batches(batches, device, mean, std, channels_last: bool):
    """The normalised model inputs of ``batches`` without augmentation (for :func:`update_bn`)."""
    from lungxray.models.inference import to_model_input

    return (to_model_input(x, device, mean, std, channels_last) for x, _ in batches)


def weights_to_keep(candidate: dict, model: nn.Module, avg: WeightAverage | None) -> nn.Module:
    """The module whose weights ``candidate`` (from :func:`choose`) names."""
    return avg.module if avg is not None and candidate["weights"] != "raw" else model
