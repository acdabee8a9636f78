"""Training-time augmentation suited to X-rays: a small affine and brightness/contrast on the tensors, vectorised over
the batch (never vertical flips; horizontal ones only when asked, the heart being on the left)."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from lungxray.core.config import Strict


class AugmentParams(Strict):
    enabled: bool = Field(True, description="augment the train batches; false = train on the images as they are")
    degrees: float = Field(5.0, ge=0, le=30, description="random rotation, +- degrees")
    translate: float = Field(0.05, ge=0, le=0.3, description="random shift, fraction of the side")
    scale: tuple[float, float] = Field((0.95, 1.05), description="random zoom factor, drawn in [lo, hi] (> 1 "
                                                                 "enlarges)")
    brightness: float = Field(0.1, ge=0, le=1, description="random brightness factor in [1 - b, 1 + b]; 0 = none")
    contrast: float = Field(0.1, ge=0, le=1, description="random contrast factor around the image mean, in "
                                                        "[1 - c, 1 + c]; 0 = none")
    hflip: bool = Field(False, description="horizontal flips (off: the heart is on the left)")


def augment_batch(x: torch.Tensor, aug: AugmentParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random small affine + brightness/contrast (+ optional horizontal flip) for a float batch (B, 1, S, S) in
    [0, 1], vectorised over the batch (one affine_grid/grid_sample call; works on CPU and GPU)."""
    import torch.nn.functional as F

    b = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator) * (hi - lo) + lo

    draws = {"angle": u(-aug.degrees, aug.degrees) * (math.pi / 180), "scale": u(*aug.scale),
             "tx": u(-aug.translate, aug.translate) * 2, "ty": u(-aug.translate, aug.translate) * 2}  # grid units span 2
    if aug.hflip:
        draws["flip"] = (torch.rand(b, generator=generator) < 0.5).float()
    if aug.brightness:
        draws["brightness"] = u(1 - aug.brightness, 1 + aug.brightness)
    if aug.contrast:
        draws["contrast"] = u(1 - aug.contrast, 1 + aug.contrast)
    stacked = torch.stack(list(draws.values()))  # drawn on the CPU, sent in one copy that does not wait for the GPU
    if x.device.type == "cuda":
        stacked = stacked.pin_memory().to(x.device, non_blocking=True)
    d = dict(zip(draws, stacked.to(x.device).unbind(0)))
    angle, scale, tx, ty = d["angle"], d["scale"], d["tx"], d["ty"]
    flip = d["flip"] > 0.5 if aug.hflip else torch.zeros(b, dtype=torch.bool, device=x.device)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    sx = torch.where(flip, -1.0, 1.0).to(x.dtype)
    theta = torch.stack([torch.stack([cos * sx, -sin, tx], 1), torch.stack([sin * sx, cos, ty], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if aug.brightness:
        x = x * d["brightness"].view(b, 1, 1, 1).to(x.dtype)
    if aug.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * d["contrast"].view(b, 1, 1, 1).to(x.dtype) + mean
    return x.clamp_(0.0, 1.0)
