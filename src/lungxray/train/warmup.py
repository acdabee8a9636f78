"""Learning-rate warm-up (``train.warmup_epochs``): the schedule that the train stage steps once per epoch.

With ``w = warmup_epochs > 0``, epoch ``e`` (1-based) trains at ``lr * e / (w + 1)`` for ``e <= w``; the configured
schedule then runs over the remaining ``epochs - w`` epochs as if they were the whole run (cosine from ``lr`` down,
step decays counted from the end of the warm-up, none = constant). ``plateau`` takes no warm-up: it reacts to the val
loss, not to the epoch. With ``w = 0`` the schedule is :func:`lungxray.train.loop.build_scheduler`'s, unchanged.
"""

from __future__ import annotations

import math

import torch

from lungxray.core.errors import LungxrayError


def lr_factor(epoch0: int, warmup: int, epochs: int, scheduler: str, step_size: int = 5, gamma: float = 0.1) -> float:
    """The factor of the base lr at 0-based epoch ``epoch0`` (what ``LambdaLR`` asks for)."""
    if epoch0 < warmup:
        return (epoch0 + 1) / (warmup + 1)
    t, span = epoch0 - warmup, max(1, epochs - warmup)
    if scheduler == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(t, span) / span))
    if scheduler == "step":
        return gamma ** (t // step_size)
    return 1.0


def build_warmup_scheduler(params, opt: torch.optim.Optimizer, epochs: int):
    """A ``LambdaLR`` doing the warm-up then ``params.scheduler`` (see the module docstring)."""
    if params.scheduler == "plateau":
        raise LungxrayError("train.warmup_epochs does not combine with scheduler: plateau; use cosine, step or none, "
                            "or set warmup_epochs: 0")
    w = min(params.warmup_epochs, max(0, epochs - 1))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: lr_factor(e, w, epochs, params.scheduler, params.step_size, params.gamma))
