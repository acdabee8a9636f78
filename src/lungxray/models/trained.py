"""A trained model: one object (:class:`TrainedModel`) for the network and everything needed to use it, loaded in one
place (:func:`load_trained_model`) from the ``model.pt`` the train stage writes.

The rules:

* **One reader of model.pt.** Only :func:`load_trained_model` opens a ``model.pt`` and reads its keys; evaluate, the
  ensemble, the external folds, serving (:mod:`lungxray.serve.predictor`) and Grad-CAM take a :class:`TrainedModel`
  (a test checks that nothing else unpacks the file).
* **What it carries.** The network (eval mode, on ``device``), its name and architecture (``create_model``'s name:
  a variant's settings' ``model``, or ``name`` in files that do not record it), the classes, the preprocessing its
  training images went through (``image_size``, ``aspect``, ``resample``: the preprocess stage's settings; a file
  written before ``aspect``/``resample`` were recorded used the defaults), the normalisation (``mean``/``std``, one
  value per RGB channel), and what was fitted on val at the end of training: the ``temperature`` (``T = 1``: none),
  its ``calibration`` record and the ``operating_points`` (:mod:`lungxray.models.calibration`).
* **Its numbers.** :meth:`TrainedModel.logits` is :func:`lungxray.models.inference.predict_logits` with the model's
  own ``mean``/``std``; :meth:`TrainedModel.proba` is ``softmax(logits / T)`` with the stored temperature (what the
  model serves and what the evaluate stage reports), unless a temperature is given (``1.0``: uncalibrated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from lungxray.core.errors import LungxrayError
from lungxray.models.inference import predict_logits, softmax_t


@dataclass
class TrainedModel:
    """A trained network with its classes, preprocessing, normalisation, temperature and operating points (see the
    module docstring). Built by :func:`load_trained_model`; treat it as read-only (serving sets only its input
    limits and ``source``)."""

    network: nn.Module  # in eval mode, on ``device``
    name: str  # the model's name in the pipeline (a variant's own name)
    architecture: str  # what create_model built (lungxray.models.architectures)
    classes: list[str]
    image_size: int  # the preprocessing of its training images (the preprocess stage's settings)
    aspect: str
    resample: str
    mean: list[float]  # normalisation per RGB channel: (x / 255 - mean[c]) / std[c]
    std: list[float]
    device: torch.device
    source: str  # where it was loaded from
    temperature: float = 1.0  # calibrated probabilities = softmax(logits / temperature), fitted on val
    operating_points: dict = field(default_factory=dict)  # lungxray.models.calibration.choose_operating_points
    calibration: dict = field(default_factory=dict)  # how the temperature was fitted (method, val NLL before/after)
    data_version: str | None = None  # the processed data it was trained on (lungxray.models.checkpoint.data_version)

    def logits(self, images: np.ndarray, batch_size: int = 64, view: Callable | None = None) -> np.ndarray:
        """Logits (N, C) float64 of uint8 greyscale images (N, S, S), normalised as in training
        (:func:`lungxray.models.inference.predict_logits`; ``view``: a test-time augmentation view)."""
        return predict_logits(self.network, images, self.mean, self.std, batch_size, self.device, view=view)

    def calibrated(self, logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
        """``softmax(logits / T)`` with the stored temperature (or ``temperature``: 1.0 is uncalibrated)."""
        return softmax_t(logits, self.temperature if temperature is None else temperature)

    def proba(self, images: np.ndarray, batch_size: int = 64, temperature: float | None = None) -> np.ndarray:
        """Class probabilities (N, C) float64: :meth:`calibrated` of :meth:`logits` (the stored temperature unless
        ``temperature`` is given)."""
        logits = self.logits(images, batch_size)
        return self.calibrated(logits, temperature) if len(logits) else logits

    def to(self, device: str | torch.device) -> TrainedModel:
        """Move the network to ``device`` (in place); returns the model."""
        self.device = _device(device)
        self.network = self.network.to(self.device)
        return self


def _device(device: str | torch.device) -> torch.device:
    from lungxray.core.device import resolve_device

    return device if isinstance(device, torch.device) else resolve_device(str(device))


def _architecture(ck: dict) -> str:
    """The architecture a ``model.pt`` was built from: its settings' ``model`` (a variant's architecture: ``name`` is
    the variant's name), or ``name`` in files that do not record it."""
    return (ck.get("config") or {}).get("settings", {}).get("model") or ck["name"]


def _network(ck: dict, st: dict, path: Path) -> nn.Module:
    """The network of a model.pt (``st``: its settings), rebuilt as the architecture it records, with its weights, in
    eval mode."""
    from lungxray.models.architectures import create_model

    model = create_model(_architecture(ck), num_classes=len(ck["classes"]), pretrained=False, freeze=st["freeze"],
                         head=st["head"])
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise LungxrayError(f"{path} does not fit the current code of model {ck['name']} "
                            f"({' '.join(str(e).split())[:200]}): retrain it with `dvc repro train@{ck['name']}`"
                            ) from None
    return model.eval()


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """The :class:`TrainedModel` of a ``models/<name>/model.pt`` (safe load: tensors and plain data only), its network
    on ``device`` (``auto``: the GPU when one is visible). A missing, unreadable or outdated file raises a
    :class:`LungxrayError` that says how to rebuild it."""
    from lungxray.data.preprocess import preprocess_record

    path = Path(path)
    if not path.exists():
        raise LungxrayError(f"no trained model at {path}: run `dvc repro` (the train stage) first")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        settings = ck["config"]["settings"]
    except Exception as e:  # noqa: BLE001
        raise LungxrayError(f"{path} is unreadable ({' '.join(str(e).split())[:200]}): retrain it with "
                            f"`dvc repro -f train@{path.parent.name}`") from None
    network = _network(ck, settings, path)
    pre = ck.get("preprocess") or preprocess_record({"image_size": ck["image_size"]})
    dev = _device(device)
    return TrainedModel(network=network.to(dev).eval(), name=ck["name"], architecture=_architecture(ck),
                        classes=list(ck["classes"]), image_size=int(pre["image_size"]), aspect=pre["aspect"],
                        resample=pre["resample"], mean=[float(v) for v in ck["mean"]],
                        std=[float(v) for v in ck["std"]], device=dev, source=str(path),
                        temperature=float(ck.get("temperature", 1.0)),
                        operating_points=dict(ck.get("operating_points") or {}),
                        calibration=dict(ck.get("calibration") or {}),
                        data_version=(ck["config"].get("data") or {}).get("version"))


__all__ = ["TrainedModel", "load_trained_model"]
