"""A :class:`~lungxray.models.trained.TrainedModel` around a network built in a test (no model.pt): what
``load_trained_model`` would give for it."""

from __future__ import annotations

from typing import Sequence

import torch

from lungxray.models.trained import TrainedModel


def as_trained(network: torch.nn.Module, architecture: str = "cnn5", mean: float = 0.5, std: float = 0.25,
               classes: Sequence[str] | None = None, image_size: int = 32, temperature: float = 1.0,
               device: str = "cpu") -> TrainedModel:
    """``network`` as a trained model of ``architecture``, normalised with ``mean``/``std`` on every channel."""
    if classes is None:
        classes = [f"class{i}" for i in range(int(getattr(network, "num_classes", 0) or 0))]
    return TrainedModel(network=network, name=architecture, architecture=architecture, classes=list(classes),
                        image_size=image_size, aspect="stretch", resample="bilinear", mean=[float(mean)] * 3,
                        std=[float(std)] * 3, device=torch.device(device), source="a test's network",
                        temperature=temperature)
