"""The parts of the training loop that :mod:`lungxray.train` puts together: batches, class weights, seeds, device,
precision, optimiser, learning-rate schedule and one epoch (:func:`run_epoch`).

* Batches are read straight from the preprocess stage's uint8 arrays (:class:`ArrayBatches`); an epoch's order is
  drawn from a generator seeded with ``seed + epoch``, so a resumed run sees the same batches.
* Class weights are inverse class frequencies, scaled to mean 1 over the classes present; an absent class gets 0.
* Several processes (:mod:`lungxray.train.distributed`): every process draws the same order and takes its share of each
  global batch (``rank`` of ``world``): the drawn index is padded (repeating its start) to a multiple of the process
  count, so every process gets the same number of batches and there are as many steps as one process would take;
  a sequential pass (validation) is split exactly instead, nothing repeated, and the sums are added up at the end.
* The input path never makes the host wait for the GPU: batches are read in a background thread
  (:class:`Prefetched`) into pinned memory on CUDA and copied with ``non_blocking``; loss and accuracy are summed on
  the device and read once per pass; Adam/AdamW/SGD use their fused CUDA kernels (which also let the fp16 loss
  scaler skip its per-step check on the host). None of this changes a number on the CPU.
* Device: ``auto`` = CUDA when a GPU is visible, else the CPU. Precision: ``auto`` = fp16 autocast (with loss scaling)
  on CUDA, bf16 on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.
"""

from __future__ import annotations

import queue
import random
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from lungxray.core.errors import LungxrayError
from lungxray.images.augment import AugmentParams
from lungxray.models.inference import to_model_input
from lungxray.train.settings import TrainParams

# --- data -------------------------------------------------------------------------------------------------------------


class ArrayBatches:
    """Batches of a preprocessed split, read straight from the uint8 memmap (no per-item Python, no decoding).

    Yields ``(x, y)``: ``x`` uint8 ``(B, 1, S, S)``, ``y`` int64 ``(B,)``. ``order`` is "sequential", "shuffle" or
    "weighted" (sampling with replacement by ``weights``), drawn from ``generator`` so that an epoch's batches are the
    same whether or not the run was resumed. ``batch_size`` is the global batch; process ``rank`` of ``world`` gets
    its share of each (see the module's docstring). ``pin_memory``: batches in page-locked memory (for CUDA).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, order: str = "sequential",
                 generator: torch.Generator | None = None, weights: torch.Tensor | None = None, rank: int = 0,
                 world: int = 1, pin_memory: bool = False):
        self.images, self.labels, self.batch_size = images, np.asarray(labels, dtype=np.int64), batch_size
        self.pin_memory = pin_memory
        n = len(self.labels)
        if order == "shuffle":
            self.index = torch.randperm(n, generator=generator).numpy()
        elif order == "weighted":
            self.index = torch.multinomial(weights.double(), n, replacement=True, generator=generator).numpy()
        else:
            self.index = np.arange(n)
        self.batches = shard_batches(self.index, batch_size, rank, world, even=order != "sequential")

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for idx in self.batches:
            order = np.argsort(idx, kind="stable")  # read the memmap in file order, restore the drawn order after
            rows = torch.empty((len(idx), 1) + self.images.shape[1:], dtype=torch.uint8, pin_memory=self.pin_memory)
            rows.numpy()[order, 0] = self.images[idx[order]]
            yield rows, torch.from_numpy(self.labels[idx])


def shard_batches(index: np.ndarray, batch_size: int, rank: int = 0, world: int = 1,
                  even: bool = True) -> list[np.ndarray]:
    """Process ``rank``'s batches of ``index`` cut into global batches of ``batch_size``: its contiguous share of
    each. ``even``: the index is first padded (cyclically) to a multiple of ``world``, so that every process has the
    same number of batches (a training epoch: each step is a collective); else the index is split exactly (an
    evaluation pass)."""
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} is not a multiple of the {world} processes")
    if world == 1:
        return [index[s: s + batch_size] for s in range(0, len(index), batch_size)]
    local = batch_size // world
    if not even:
        part = np.array_split(index, world)[rank]
        return [part[s: s + local] for s in range(0, len(part), local)]
    padded = np.resize(index, -(-len(index) // world) * world) if len(index) else index
    out = []
    for s in range(0, len(padded), batch_size):
        g = padded[s: s + batch_size]
        k = len(g) // world
        out.append(g[rank * k: (rank + 1) * k])
    return out


class Prefetched:
    """Iterate ``batches`` in a background thread, ``depth`` batches ahead (the memmap reads and the copies into
    pinned memory overlap the training step). An error in the thread is raised in the caller."""

    _END = object()

    def __init__(self, batches, depth: int = 2):
        self.batches, self.depth = batches, depth

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        q: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for item in self.batches:
                    if not put(item):
                        return
                put(self._END)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                put(e)

        thread = threading.Thread(target=work, name="lungxray-prefetch", daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not self._END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()


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
    fused = {"fused": True} if trainable[0].is_cuda else {}  # one kernel; no host sync in the fp16 scaler's step
    if params.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=lr, momentum=params.momentum, weight_decay=params.weight_decay, **fused)
    cls = torch.optim.AdamW if params.optimizer == "adamw" else torch.optim.Adam
    return cls(trainable, lr=lr, weight_decay=params.weight_decay, **fused)


def build_scheduler(params: TrainParams, opt: torch.optim.Optimizer, epochs: int):
    if params.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    if params.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=params.step_size, gamma=params.gamma)
    if params.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=params.gamma, patience=1)
    return None


def optimiser_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler=None) -> None:
    """Backward and step from ``loss``: through the loss scaler for fp16 (``scaler``), plainly otherwise."""
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()


@dataclass(frozen=True)
class Feed:
    """How a pass feeds a model: where it runs, in which precision and memory format, with which input
    normalisation, and over which processes (``world``: a :class:`lungxray.train.distributed.World`; None = this
    one)."""

    device: torch.device
    mean: float | Sequence[float]
    std: float | Sequence[float]
    amp: torch.dtype | None = None
    channels_last: bool = False
    world: object = None


def run_epoch(model: nn.Module, batches: ArrayBatches, loss_fn: nn.Module, feed: Feed,
              opt: torch.optim.Optimizer | None = None, *, scaler=None, on_train_mode=None,
              augment: AugmentParams | None = None, generator: torch.Generator | None = None,
              on_step=None) -> tuple[float, float, int]:
    """One pass; trains when ``opt`` is given (``on_step(model)`` after each optimiser step: weight averaging).
    Returns (mean loss, accuracy, images), over every process of ``feed.world`` when given. The sums stay on the
    device until the end of the pass."""
    device, amp, channels_last, world = feed.device, feed.amp, feed.channels_last, feed.world
    mean, std = feed.mean, feed.std
    training = opt is not None
    model.train(training)
    if training and on_train_mode is not None:
        on_train_mode(model)
    mean, std = (torch.as_tensor(v, dtype=torch.float32).to(device) for v in (mean, std))  # once, not every step
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    ctx = torch.enable_grad() if training else torch.inference_mode()
    with ctx:
        for x, y in Prefetched(batches):
            x = to_model_input(x, device, mean, std, channels_last, augment if training else None, generator)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(x)
                loss = loss_fn(logits.float(), y)
            if training:
                optimiser_step(loss, opt, scaler)
                if on_step is not None:
                    on_step(model)
            total_loss += loss.detach().double() * len(y)
            correct += (logits.argmax(1) == y).sum()
            n += len(y)
    sums = torch.stack([total_loss, correct.double(), torch.tensor(float(n), dtype=torch.float64, device=device)])
    sums = world.sum(sums) if world is not None else sums
    total, right, count = sums.tolist()  # the one read of the pass
    return total / max(count, 1), right / max(count, 1), int(count)
