"""Where a model runs: ``auto`` (the GPU when one is visible, else the CPU), ``cuda`` or ``cpu``; one rule for
training, evaluation, the ensemble, the external folds and serving."""

from __future__ import annotations

import torch

from lungxray.core.errors import LungxrayError


def resolve_device(setting: str) -> torch.device:
    """``auto``: CUDA when visible, else the CPU; ``cuda`` without a GPU is an error, never a silent CPU run."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise LungxrayError("device 'cuda' is asked for (train.device or --device) but no CUDA GPU is visible; use "
                            "'auto' or 'cpu'")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")
