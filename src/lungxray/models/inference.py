"""Inference with a network: turn uint8 greyscale images into its input (:func:`to_model_input`, shared with
training), its logits and class probabilities (:func:`predict_logits`, :func:`predict_proba`; a trained model
loaded from its ``model.pt`` carries its own normalisation and temperature: :mod:`lungxray.models.trained`;
:func:`predict_images` for a logged or registered MLflow model, which takes images: :mod:`lungxray.serve.image_model`)
and its speed (:func:`measure_throughput`)."""

from __future__ import annotations

import math
import os
import statistics
import time
from typing import Any, Sequence

import numpy as np
import torch

from lungxray.core.errors import LungxrayError
from lungxray.images.augment import AugmentParams, augment_batch


def to_model_input(x: torch.Tensor, device: torch.device, mean: float | Sequence[float],
                   std: float | Sequence[float], channels_last: bool, augment: AugmentParams | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 greyscale batch (B, 1, S, S) -> normalised 3-channel float batch on the device.

    Channel ``c`` is ``(x / 255 - mean[c]) / std[c]`` (``mean``/``std``: one value per RGB channel, see
    :func:`input_normalisation`, or one value for all three). Augmentation (training only) runs here on the whole
    batch, on the device; grey is replicated to 3 channels only at this point."""
    x = x.to(device, non_blocking=True).float().div_(255.0)
    if augment is not None and augment.enabled:
        x = augment_batch(x, augment, generator)
    m = torch.as_tensor(mean, dtype=x.dtype).reshape(1, -1, 1, 1).to(device, non_blocking=True)
    s = torch.as_tensor(std, dtype=x.dtype).reshape(1, -1, 1, 1).to(device, non_blocking=True)
    x = ((x - m) / s).expand(-1, 3, -1, -1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _device(device) -> "torch.device":  # noqa: F821
    import torch

    return device if isinstance(device, torch.device) else torch.device(device)


def predict_logits(model, images: np.ndarray, mean: float | Sequence[float], std: float | Sequence[float],
                   batch_size: int = 64, device="cpu", in_chans: int = 3, view=None) -> np.ndarray:
    """Logits (N, C) float64 for uint8 greyscale images (N, S, S), normalised as in training.

    x/255, then (x - mean[c]) / std[c] per channel with the model's own statistics (model.pt's ``mean``/``std``: its
    pretrained weights' or the train split's; one value applies to every channel); the grey channel is replicated to
    ``in_chans`` (3 for ImageNet-shaped stems) per batch, so only one batch is ever in float. Works on memory-mapped
    arrays. ``view`` (optional) transforms each float batch (B, 1, S, S) in [0, 1] first (test-time augmentation).
    """
    import torch

    dev = _device(device)
    imgs = np.asarray(images) if not isinstance(images, np.memmap) else images
    if imgs.ndim != 3:
        raise ValueError(f"images must be (N, S, S) uint8, got shape {imgs.shape}")
    model = model.to(dev).eval()
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)[:, :in_chans].to(dev)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)[:, :in_chans].to(dev)
    out = []
    with torch.inference_mode():
        for i in range(0, imgs.shape[0], batch_size):
            x = torch.from_numpy(np.array(imgs[i:i + batch_size], dtype=np.uint8, copy=True)).to(dev)
            x = x.float().div_(255.0).unsqueeze(1)
            x = view(x) if view is not None else x
            x = ((x - m) / s).expand(-1, in_chans, -1, -1).contiguous()
            out.append(model(x).float().double().cpu().numpy())
    if not out:
        with torch.inference_mode():
            s = imgs.shape[1] if imgs.ndim == 3 else 1
            c = model(torch.zeros(1, in_chans, s, s, device=dev)).shape[1]
        return np.zeros((0, c))
    return np.concatenate(out)


def softmax_t(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / T)`` row-wise, in float64 (stable: the row maximum is subtracted first)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_proba(model, images: np.ndarray, mean: float | Sequence[float], std: float | Sequence[float],
                  batch_size: int = 64, device="cpu", in_chans: int = 3, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities (N, C) float64: ``softmax(logits / temperature)`` of :func:`predict_logits` (model.pt's
    ``temperature``, fitted on val, gives the calibrated probabilities: :mod:`lungxray.models.calibration`)."""
    logits = predict_logits(model, images, mean, std, batch_size, device, in_chans)
    return softmax_t(logits, temperature) if len(logits) else logits


def measure_throughput(model, image_size: int, batch_size: int = 64, device="cpu", n_batches: int = 20,
                       warmup: int = 3, single_runs: int | None = None, in_chans: int = 3,
                       max_seconds: float | None = None) -> dict[str, Any]:
    """Batched throughput (images/s) and median single-image latency (ms) of ``model`` on random inputs.

    ``warmup`` untimed batches (and single images) first; CUDA is synchronised around every timed call. At most
    ``n_batches`` batches and ``single_runs`` single images are timed; with ``max_seconds``, each of the two timings
    also stops once it has taken that long (at least one call each): at 224 px on a CPU, 20 batches of 64 took longer
    than the rest of the evaluation (about 100 s for cnn5, minutes for efficientnetv2_s). The result says what was
    measured: device, batch size, torch threads, batches and single runs actually timed.
    """
    import torch

    dev = _device(device)
    model = model.to(dev).eval()
    single_runs = single_runs or max(n_batches, 10)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    xb = torch.randn(batch_size, in_chans, image_size, image_size, generator=gen).to(dev)
    x1 = xb[:1].contiguous()
    budget = math.inf if max_seconds is None else max_seconds
    with torch.inference_mode():
        for _ in range(warmup):
            model(xb)
            model(x1)
        sync()
        t0 = time.perf_counter()
        timed = 0
        while timed < n_batches and (timed == 0 or time.perf_counter() - t0 < budget):
            model(xb)
            timed += 1
            sync()
        batched_s = time.perf_counter() - t0
        lat: list[float] = []
        t1 = time.perf_counter()
        while len(lat) < single_runs and (not lat or time.perf_counter() - t1 < budget):
            sync()
            t = time.perf_counter()
            model(x1)
            sync()
            lat.append(time.perf_counter() - t)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (os.uname().machine if hasattr(os, "uname")
                                                                       else "cpu")
    return {
        "images_per_s": float(batch_size * timed / batched_s) if batched_s > 0 else None,
        "latency_ms_median": float(statistics.median(lat) * 1000.0),
        "latency_ms_p90": float(np.quantile(lat, 0.9) * 1000.0),
        "device": str(dev),
        "device_name": name,
        "batch_size": int(batch_size),
        "image_size": int(image_size),
        "torch_threads": int(torch.get_num_threads()),
        "n_batches": int(timed),
        "single_runs": len(lat),
        "warmup": int(warmup),
    }


def predict_images(model_uri: str, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, C) of uint8 greyscale images (N, H, W) by a logged or registered lungxray image model
    (:mod:`lungxray.serve.image_model`: it applies its own preprocessing and normalisation)."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:  # MLflow leaves its own download folder behind
        model = mlflow.pyfunc.load_model(model_uri, dst_path=tmp)
        out = model.predict({"image": np.asarray(images, dtype=np.uint8)})
    failed = out[out.error != ""]
    if len(failed):
        raise LungxrayError(f"{model_uri} could not use {len(failed)} image(s): {failed.error.iloc[0]}")
    return out[[c for c in out.columns if c.startswith("prob_")]].to_numpy(dtype=np.float64)
