"""Test-time augmentation (an ``evaluate.tta`` option, reported beside the plain figures): the mean of the
(calibrated) probabilities over a fixed, deterministic set of views of each image.

* ``shifts``: the image itself, shifted by ``SHIFT`` of its side left, right, up and down, and scaled by
  ``1 - SCALE`` and ``1 + SCALE`` (7 views); ``flips_shifts``: the same plus the horizontal mirror of the image
  (8 views). Never a vertical flip (an upside-down chest X-ray is not a plausible input), nor a rotation.
* Each view is an affine resampling of the float batch in [0, 1] (bilinear, zeros outside: the convention of the
  training augmentation in :mod:`lungxray.images.augment`, whose random draws and photometric jitter do not fit a fixed
  set of views); the identity view is the image unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

if TYPE_CHECKING:
    from lungxray.models.trained import TrainedModel

TtaMode = Literal["none", "shifts", "flips_shifts"]
SHIFT = 0.04  # fraction of the side
SCALE = 0.05

# (name, horizontal mirror, scale, shift x, shift y): shifts in fractions of the side, + = right / down
VIEWS = {
    "shifts": [("identity", False, 1.0, 0.0, 0.0), ("left", False, 1.0, -SHIFT, 0.0), ("right", False, 1.0, SHIFT, 0.0),
               ("up", False, 1.0, 0.0, -SHIFT), ("down", False, 1.0, 0.0, SHIFT), ("zoom_out", False, 1 - SCALE, 0, 0),
               ("zoom_in", False, 1 + SCALE, 0.0, 0.0)],
}
VIEWS["flips_shifts"] = VIEWS["shifts"] + [("hflip", True, 1.0, 0.0, 0.0)]


def view_fn(mirror: bool, scale: float, dx: float, dy: float) -> Callable:
    """A function of a float batch (B, 1, S, S): the view mirrored left-right, scaled and shifted (content moves by
    ``dx``, ``dy`` of the side)."""
    import torch
    import torch.nn.functional as F

    def apply(x: "torch.Tensor") -> "torch.Tensor":
        if not mirror and scale == 1.0 and dx == 0.0 and dy == 0.0:
            return x
        sx = -1.0 if mirror else 1.0
        # affine_grid maps output to input coordinates in [-1, 1] (a side spans 2): moving content by +dx reads -dx
        theta = torch.tensor([[sx / scale, 0.0, -2 * dx], [0.0, 1.0 / scale, -2 * dy]], dtype=x.dtype,
                             device=x.device).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    return apply


def tta_logits(model: TrainedModel, images: np.ndarray, mode: TtaMode, batch_size: int = 64) -> list[np.ndarray]:
    """The logits (N, C) of every view of ``mode`` (:data:`VIEWS`), in order."""
    return [model.logits(images, batch_size, view=view_fn(*v[1:])) for v in VIEWS[mode]]


def tta_proba(model: TrainedModel, images: np.ndarray, mode: TtaMode, batch_size: int = 64,
              temperature: float | None = None) -> np.ndarray:
    """The mean over the views of ``mode`` of ``softmax(logits / T)``: (N, C) float64; ``T`` is the model's stored
    temperature unless ``temperature`` is given (1.0: uncalibrated)."""
    views = tta_logits(model, images, mode, batch_size)
    return np.mean([model.calibrated(z, temperature) for z in views], axis=0)
