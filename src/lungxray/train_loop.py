"""The parts of the training loop that :mod:`lungxray.train` puts together: batches, class weights, seeds, device,
precision, optimiser, learning-rate schedule and one epoch (:func:`run_epoch`).

* Batches are read straight from the preprocess stage's uint8 arrays (:class:`ArrayBatches`); an epoch's order is
  drawn from a generator seeded with ``seed + epoch``, so a resumed run sees the same batches.
* Class weights are inverse class frequencies, scaled to mean 1 over the classes present; an absent class gets 0.
* Device: ``auto`` = CUDA when a GPU is visible, else the CPU. Precision: ``auto`` = fp16 autocast (with loss scaling)
  on CUDA, bf16 on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from .augment import AugmentParams
from .errors import LungxrayError
from .inference import to_model_input
from .train_settings import TrainParams


# --- data -------------------------------------------------------------------------------------------------------------


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


# --- seeds, device and precision --------------------------------------------------------------------------------------


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


# --- optimiser, schedule and one epoch --------------------------------------------------------------------------------


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
              generator: torch.Generator | None = None, on_step=None) -> tuple[float, float, int]:
    """One pass; trains when ``opt`` is given (``on_step(model)`` after each optimiser step: weight averaging).
    Returns (mean loss, accuracy, images)."""
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
                if on_step is not None:
                    on_step(model)
            total_loss += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    return total_loss / max(n, 1), correct / max(n, 1), n
