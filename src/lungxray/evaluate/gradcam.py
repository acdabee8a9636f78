"""Grad-CAM heat maps: where in an X-ray a trained model found the evidence for a class.

The rules behind the maps:

* **Library.** The `grad-cam` package (pytorch-grad-cam) computes them: ``GradCAM`` over one target layer per
  architecture, the ``cam_layer`` column of the model table (:func:`lungxray.models.architectures.cam_target_layer`: the
  last spatial feature map before global pooling).
* **Map.** For the explained class ``c`` (by default the predicted one), the target layer's channels are weighted by
  the spatial mean of the gradient of the logit ``c``, summed, ReLU'd, upsampled bilinearly to the input size and
  scaled to 0..1 per image (max = 1). A map that is 0 everywhere means nothing in the image raises the class score.
* **Input.** The model sees exactly what :meth:`lungxray.models.trained.TrainedModel.proba` gives it: uint8
  greyscale images through :func:`lungxray.models.inference.to_model_input` with the model's own ``mean``/``std``
  (a :class:`~lungxray.models.trained.TrainedModel`, loaded from its model.pt).
* **The model is left as found.** Gradients reach the target layer through the input (it requires grad), so a frozen
  backbone (``requires_grad`` False) is explained as well as a trained one; during the computation no parameter
  requires grad, and afterwards every parameter's ``requires_grad`` and ``.grad`` and every module's train/eval mode
  are restored. The network is moved to the trained model's ``device`` (as its ``proba`` does).
* **Evaluate grid.** :func:`gradcam_grid` shows, per true class, the ``per_class`` most confident correct and the
  ``per_class`` most confident wrong predictions (ties: the earlier image), each with its map; one batched
  computation, so it stays cheap on a CPU. The ensemble's grid (:func:`heatmap_grid` with :func:`mean_heatmaps`)
  shows the mean of its members' maps for the ensemble's predicted class.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from lungxray.core.errors import LungxrayError
from lungxray.core.plots import pyplot, save_png
from lungxray.models.architectures import cam_target_layer
from lungxray.models.inference import to_model_input
from lungxray.models.trained import TrainedModel

log = logging.getLogger(__name__)

GRID_PER_CLASS = 2  # correct and wrong examples per true class in the evaluate stage's gradcam.png
HEAT_WEIGHT = 0.4  # share of the heat-map colours in an overlay (the rest is the X-ray)


# ---------------------------------------------------------------------------------------------------------------------
# heat maps


@contextlib.contextmanager
def _explaining(model: nn.Module) -> Iterator[None]:
    """No parameter requires grad inside; every flag, ``.grad`` and train/eval mode restored on the way out."""
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    saved = [(p, p.requires_grad, p.grad) for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad
        for m, training in modes:
            m.training = training


def _check_images(images: np.ndarray) -> np.ndarray:
    if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1] != images.shape[2]:
        raise LungxrayError(f"Grad-CAM needs square uint8 greyscale images (N, S, S), got {images.dtype} "
                            f"{images.shape}: preprocess them as the pipeline does")
    return images


def _targets(class_indices: Sequence[int] | None, n: int, num_classes: int | None) -> list[int] | None:
    if class_indices is None:
        return None
    idx = [int(c) for c in class_indices]
    if len(idx) != n:
        raise LungxrayError(f"Grad-CAM got {len(idx)} class indices for {n} images: give one per image (or None for "
                            f"the predicted classes)")
    if num_classes is not None and any(not 0 <= c < num_classes for c in idx):
        raise LungxrayError(f"Grad-CAM class indices must be in 0..{num_classes - 1}, got {sorted(set(idx))}")
    return idx


def heatmaps(model: TrainedModel, images: np.ndarray, class_indices: Sequence[int] | None = None,
             batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps, float32 (N, S, S) in 0..1, of uint8 greyscale images (N, S, S) for a trained model (its
    network, architecture, normalisation and device): one per image, for ``class_indices[i]`` (None: each image's
    predicted class). Batches of ``batch_size``."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    images = _check_images(np.asarray(images))
    n, s = images.shape[0], images.shape[1]
    network, dev = model.network, model.device
    targets = _targets(class_indices, n, getattr(network, "num_classes", None))
    network = network.to(dev)
    layer = cam_target_layer(network, model.architecture)
    out = np.zeros((n, s, s), dtype=np.float32)
    with _explaining(network), torch.enable_grad():
        cam = GradCAM(model=network, target_layers=[layer])  # not `with`: its __exit__ would swallow an IndexError
        try:
            for i in range(0, n, batch_size):
                x = torch.from_numpy(np.array(images[i:i + batch_size], dtype=np.uint8, copy=True)).unsqueeze(1)
                x = to_model_input(x, dev, model.mean, model.std, channels_last=False).requires_grad_(True)
                chosen = None if targets is None else [ClassifierOutputTarget(c) for c in targets[i:i + batch_size]]
                out[i:i + len(x)] = cam(input_tensor=x, targets=chosen)
        finally:
            cam.activations_and_grads.release()
    log.debug("Grad-CAM of %d images (%s, layer %s)", n, model.architecture, type(layer).__name__)
    return out


def resize_maps(heats: np.ndarray, size: int) -> np.ndarray:
    """Heat maps (N, s, s) resized (bilinear) to (N, size, size), still in 0..1: an ensemble's members see the image
    at their own sizes, its map is drawn on one."""
    heats = np.asarray(heats, dtype=np.float32)
    if heats.shape[1:] == (size, size):
        return heats
    t = torch.nn.functional.interpolate(torch.from_numpy(heats).unsqueeze(1), size=(size, size), mode="bilinear",
                                        align_corners=False)
    return t.squeeze(1).clamp(0, 1).numpy()


# ---------------------------------------------------------------------------------------------------------------------
# overlays


def blend(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """RGB uint8 (S, S, 3): the greyscale X-ray under the heat map in the jet colours (red = most evidence)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if image.shape != heat.shape:
        raise LungxrayError(f"image {image.shape} and heat map {heat.shape} differ in size")
    rgb = np.repeat((np.asarray(image, dtype=np.float32) / 255.0)[..., None], 3, axis=2)
    return show_cam_on_image(rgb, np.clip(heat, 0.0, 1.0), use_rgb=True, image_weight=1.0 - HEAT_WEIGHT)


def overlay(image: np.ndarray, heat: np.ndarray, title: str):
    """A figure of one X-ray (uint8 (S, S)) beside it with its heat map (float (S, S) in 0..1) overlaid, under
    ``title`` (e.g. ``"pneumonia 0.93"``). Write it with :func:`lungxray.core.plots.save_png`."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.6))
    left.imshow(image, cmap="gray", vmin=0, vmax=255)
    left.set_title("X-ray", fontsize=9)
    right.imshow(blend(image, heat))
    right.set_title("Grad-CAM", fontsize=9)
    scale = plt.cm.ScalarMappable(norm=plt.Normalize(0.0, 1.0), cmap="jet")  # the colours blend() uses
    fig.colorbar(scale, ax=right, fraction=0.046, label="evidence (0..1)")
    for ax in (left, right):
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return fig


def _overlay_path(out_dir: Path, name: str) -> Path:
    rel = PurePosixPath(str(name).replace(os.sep, "/"))
    if not rel.parts or rel.is_absolute() or ".." in rel.parts:
        raise LungxrayError(f"overlay name {name!r} must be a relative path inside the output folder")
    return out_dir / (str(rel) + ".png")


def write_overlays(out_dir: str | os.PathLike, names: Sequence[str], images: np.ndarray, heats: np.ndarray,
                   titles: Sequence[str]) -> list[Path]:
    """One overlay PNG per image, ``out_dir/<name>.png`` (a name may hold sub-folders); returns the paths."""
    out_dir = Path(out_dir)
    if not len(names) == len(images) == len(heats) == len(titles):
        raise LungxrayError(f"write_overlays needs one name, image, heat map and title each, got {len(names)}, "
                            f"{len(images)}, {len(heats)}, {len(titles)}")
    paths = [_overlay_path(out_dir, n) for n in names]
    if len(set(paths)) != len(paths):
        raise LungxrayError("write_overlays got the same name twice: each overlay needs its own file")
    for path, image, heat, title in zip(paths, images, heats, titles):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(overlay(image, heat, title), path, dpi=100, bbox_inches="tight")
    return paths


# ---------------------------------------------------------------------------------------------------------------------
# the evaluate stage's grid


def pick_examples(y_true: np.ndarray, probs: np.ndarray, per_class: int = GRID_PER_CLASS
                  ) -> list[tuple[list[int], list[int]]]:
    """Per true class (in class order): the indices of its ``per_class`` most confident correct predictions and of
    its ``per_class`` most confident wrong ones (ties: the earlier image)."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    pred, conf = probs.argmax(1), probs.max(1)
    order = np.lexsort((np.arange(len(conf)), -conf))  # most confident first, then by index
    picks = []
    for c in range(probs.shape[1]):
        mine = order[y_true[order] == c]
        right = mine[pred[mine] == c][:per_class]
        wrong = mine[pred[mine] != c][:per_class]
        picks.append(([int(i) for i in right], [int(i) for i in wrong]))
    return picks


def gradcam_grid(model: TrainedModel, images: np.ndarray, y_true: np.ndarray, probs: np.ndarray,
                 per_class: int = GRID_PER_CLASS, title: str | None = None):
    """A figure: one row per true class, ``per_class`` correctly then ``per_class`` wrongly classified images
    (:func:`pick_examples`), each with the Grad-CAM map of its predicted class; an empty cell says "none"."""
    return heatmap_grid(images, y_true, probs, model.classes, lambda im, k: heatmaps(model, im, k), per_class, title)


def mean_heatmaps(models: Sequence[TrainedModel], images: np.ndarray, class_indices: Sequence[int]) -> np.ndarray:
    """The mean of several trained models' Grad-CAM maps of the same images (an ensemble's map)."""
    return np.mean([heatmaps(model, images, class_indices) for model in models], axis=0)


def heatmap_grid(images: np.ndarray, y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                 explain: Callable[[np.ndarray, list[int]], np.ndarray], per_class: int = GRID_PER_CLASS,
                 title: str | None = None):
    """:func:`gradcam_grid` with the maps from ``explain(images, class_indices)`` (one model's, or an ensemble's:
    :func:`mean_heatmaps`)."""
    picks = pick_examples(y_true, probs, per_class)
    chosen = sorted({i for right, wrong in picks for i in right + wrong})
    pred = np.asarray(probs).argmax(1)
    heats = explain(np.asarray(images[chosen]), pred[chosen].tolist()) if chosen else []
    heat_of = dict(zip(chosen, heats))
    plt = pyplot()
    rows, cols = len(classes), 2 * per_class
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.3 * rows), squeeze=False)
    for c, (right, wrong) in enumerate(picks):
        for k in range(cols):
            ax, group = axes[c, k], right if k < per_class else wrong
            j = k % per_class
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(f"true {classes[c]}", fontsize=9)
            if j >= len(group):
                ax.text(0.5, 0.5, "none", ha="center", va="center", color="grey", transform=ax.transAxes)
                ax.set_title("correct" if k < per_class else "wrong", fontsize=8, color="grey")
                continue
            i = group[j]
            ax.imshow(blend(np.asarray(images[i]), heat_of[i]))
            verdict = "correct" if k < per_class else "wrong"
            ax.set_title(f"{verdict}: {classes[pred[i]]} {probs[i, pred[i]]:.2f}", fontsize=8,
                         color="tab:green" if k < per_class else "tab:red")
    fig.suptitle(title or "Grad-CAM: correct and wrong predictions per class", fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["GRID_PER_CLASS", "blend", "gradcam_grid", "heatmap_grid", "heatmaps", "mean_heatmaps", "overlay",
           "pick_examples", "resize_maps", "write_overlays"]
