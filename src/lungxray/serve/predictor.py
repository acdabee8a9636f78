"""A trained model with its input contract, the code the registered MLflow model and ``lungxray predict`` share.

A :class:`Predictor` is a trained model (:class:`lungxray.models.trained.TrainedModel`: the network with what its
``model.pt`` records about its inputs: the classes, the preprocessing its training images went through
(``image_size``, ``aspect``, ``resample``: the preprocess stage's settings), the normalisation (``mean``/``std``), and
what was fitted on the val split at the end of training: the ``temperature`` of its calibrated probabilities
(``softmax(logits / T)``) and its ``operating_points``, :mod:`lungxray.models.calibration`) with serving's input
limits. A new image goes through exactly that: decoded by :func:`lungxray.images.decode.open_grey` (PNG 8/16-bit,
JPEG, DICOM, ...), made square by :func:`lungxray.data.preprocess.to_square` (as
:func:`lungxray.data.preprocess.load_square` does for the preprocess stage), normalised and classified by
:meth:`~lungxray.models.trained.TrainedModel.proba`.

An image the pipeline would not have used is refused (:class:`~lungxray.images.decode.ImageRejected`, its row's error):
one over ``max_pixels`` (``fetch.max_pixels``; not decoded), or one narrower than ``min_width`` or lower than
``min_height`` (the validate stage's bounds, which no training image was below). :func:`set_input_limits` sets them
(``lungxray predict``: from params.yaml and ``--max-pixels``; the registered model keeps the defaults).
:func:`classify` turns a batch of inputs into output rows: ``predicted``, one ``prob_<class>`` per class and ``error``
(why an input could not be used; the others are still classified), and hands the classified batch
(:class:`PredictedBatch`) to an optional ``on_batch`` callback.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from lungxray.core.schema import DEFAULT_MAX_PIXELS
from lungxray.images.decode import ImageRejected
from lungxray.models.trained import TrainedModel, load_trained_model

if TYPE_CHECKING:
    import pandas as pd

MODEL_ARTIFACT = "model.pt"  # the key (and file name) of model.pt among the MLflow model's artifacts
PREDICTED, ERROR = "predicted", "error"
# how :func:`lungxray.images.decode.too_many_pixels` ends (true for fetch, preprocess, the dedupe and predict commands);
# a predictor whose reader has neither setting (the registered model) says instead what its max_pixels_hint says
MAX_PIXELS_HINT = "raise fetch.max_pixels or --max-pixels to accept it"
# the defaults of validate.min_width / min_height (lungxray.data.validate.ValidateParams, a test checks they agree): not
# imported, so that the stages that bundle this module do not depend on the validate package
MIN_WIDTH = MIN_HEIGHT = 32


def prob_column(cls: str) -> str:
    return f"prob_{cls}"


# ----------------------------------------------------------------------------------------------------------------------
# the model and its input contract


@dataclass
class Predictor(TrainedModel):
    """A trained model ready for new images (see the module docstring): a
    :class:`~lungxray.models.trained.TrainedModel` with what serving adds (the batch size and the input limits)."""

    batch_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are not decoded (fetch.max_pixels)
    max_pixels_hint: str = MAX_PIXELS_HINT  # what the rejection of a larger image says to do
    min_width: int = MIN_WIDTH  # narrower or lower images are refused (validate.min_width / min_height)
    min_height: int = MIN_HEIGHT

    def contract(self) -> dict:
        """What the model expects and returns, as recorded in the MLflow model's metadata."""
        return {"classes": list(self.classes), "architecture": self.architecture, "image_size": self.image_size,
                "aspect": self.aspect, "resample": self.resample, "mean": list(self.mean), "std": list(self.std),
                "normalisation": "x / 255, then (x - mean[c]) / std[c] per channel, grey copied to 3 channels",
                "inputs": "column `image`: file paths, encoded image bytes (PNG, JPEG, DICOM, ...; base64 in JSON) "
                          "or uint8 greyscale arrays (H, W)",
                "outputs": f"`{PREDICTED}` (class name), one `prob_<class>` per class, `{ERROR}` (why an input "
                           f"could not be used; empty otherwise)",
                "probabilities": f"calibrated on the val split: softmax(logits / T), temperature T = "
                                 f"{self.temperature:.4f} (temperature scaling; T = 1: uncalibrated)",
                "temperature": float(self.temperature),
                "operating_points": {k: {"class": v["class"], "threshold": v["threshold"], "rule": v["rule"]}
                                     for k, v in self.operating_points.items()},
                "operating_point_rule": "argmax: the predicted class; <class>@...: flag the class when "
                                        "prob_<class> >= threshold (chosen on val)"}

    def square(self, source) -> np.ndarray:
        """One image (a path, its bytes, or a uint8 greyscale array) as the model's (S, S) uint8 input; a file that
        cannot be used, or that the pipeline would not have used (see the module docstring), raises
        :class:`~lungxray.images.decode.ImageRejected`."""
        from PIL import Image

        from lungxray.data.preprocess import to_square
        from lungxray.images.decode import open_grey

        if isinstance(source, np.ndarray):
            if source.ndim != 2 or source.dtype != np.uint8:
                raise ImageRejected("not_an_image", f"an array must be uint8 greyscale (H, W), got {source.dtype} "
                                                    f"{source.shape}")
            grey, size = Image.fromarray(source, mode="L"), (source.shape[1], source.shape[0])
        else:
            try:
                grey, size = open_grey(source, draft_size=self.image_size, max_pixels=self.max_pixels)
            except ImageRejected as e:
                if e.reason == "too_many_pixels" and self.max_pixels_hint != MAX_PIXELS_HINT:
                    raise ImageRejected(e.reason, e.detail.replace(MAX_PIXELS_HINT, self.max_pixels_hint)) from None
                raise
        self.check_size(*size)
        return to_square(grey, self.image_size, self.aspect, self.resample)

    def check_size(self, width: int, height: int) -> None:
        """Refuse an image narrower than ``min_width`` or lower than ``min_height``."""
        if width < self.min_width or height < self.min_height:
            raise ImageRejected("too_small", f"too small: {width}x{height} pixels, below the validate stage's minimum "
                                             f"of {self.min_width}x{self.min_height} (validate.min_width and "
                                             f"min_height): the pipeline would not have used it")


def predictor_from_file(path: str | Path, device: str = "auto") -> Predictor:
    """A :class:`Predictor` from a ``model.pt`` (written by the train stage;
    :func:`lungxray.models.trained.load_trained_model`)."""
    trained = load_trained_model(path, device)
    return Predictor(**{f.name: getattr(trained, f.name) for f in fields(TrainedModel)})


def set_input_limits(predictor, **limits) -> None:
    """Set the limits of what ``predictor`` takes (``max_pixels``, ``max_pixels_hint``, ``min_width``,
    ``min_height``; see the module docstring) on it, or on every member of an ensemble."""
    unknown = set(limits) - {"max_pixels", "max_pixels_hint", "min_width", "min_height"}
    if unknown:
        raise TypeError(f"not an input limit: {sorted(unknown)}")
    for p in getattr(predictor, "members", [predictor]):
        for name, value in limits.items():
            setattr(p, name, value)


# ----------------------------------------------------------------------------------------------------------------------
# a batch of inputs in, one row per input out


@dataclass
class PredictedBatch:
    """One classified batch, as :func:`predict_files` hands it to ``on_batch``."""

    model: TrainedModel  # what classified it (network, architecture, normalisation, device)
    images: np.ndarray  # (N, S, S) uint8: exactly what the model saw, before normalisation
    predicted: np.ndarray  # (N,) class indices
    probs: np.ndarray  # (N, C) probabilities
    files: list[str]
    classes: list[str]

    def heatmaps(self, class_indices: Sequence[int] | None = None) -> np.ndarray:
        """Grad-CAM maps (N, S, S) in 0..1 of the batch's images for ``class_indices`` (default: the predicted
        classes): :func:`lungxray.evaluate.gradcam.heatmaps`."""
        from lungxray.evaluate.gradcam import heatmaps

        k = self.predicted if class_indices is None else class_indices
        return heatmaps(self.model, self.images, k)


def result_rows(probs: np.ndarray, classes: Sequence[str]) -> list[dict]:
    """Rows of the output table for classified images: ``predicted``, one ``prob_<class>`` per class, empty error."""
    return [{PREDICTED: classes[int(np.argmax(p))], **{prob_column(c): float(v) for c, v in zip(classes, p)},
             ERROR: ""} for p in probs]


def failed_row(classes: Sequence[str], reason: str) -> dict:
    return {PREDICTED: "", **{prob_column(c): float("nan") for c in classes}, ERROR: reason}


def _squares(predictor: Predictor, sources: Sequence) -> tuple[list[np.ndarray | None], list[str]]:
    """Each source's square image, or None and the reason it cannot be used."""
    images, errors = [], []
    for s in sources:
        try:
            images.append(predictor.square(s))
            errors.append("")
        except ImageRejected as e:
            images.append(None)
            errors.append(e.detail)
        except Exception as e:  # noqa: BLE001 - one bad input never stops the batch
            images.append(None)
            errors.append(f"cannot use this input: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
    return images, errors


def classify(predictor: Predictor, sources: Sequence, names: Sequence[str] | None = None,
             on_batch: Callable[[PredictedBatch], None] | None = None) -> list[dict]:
    """One output row per source (path, bytes or uint8 array), in order: decoded, squared, classified together. A
    predictor that is not a :class:`Predictor` (an ensemble: :mod:`lungxray.serve.ensemble_model`) classifies itself."""
    if not isinstance(predictor, Predictor):
        return predictor.classify(sources, names, on_batch)
    images, errors = _squares(predictor, sources)
    ok = [i for i, im in enumerate(images) if im is not None]
    rows = [failed_row(predictor.classes, e) for e in errors]
    if ok:
        batch = np.stack([images[i] for i in ok])
        probs = predictor.proba(batch, batch_size=predictor.batch_size)
        for i, row in zip(ok, result_rows(probs, predictor.classes)):
            rows[i] = row
        if on_batch is not None:
            names = list(names) if names is not None else [str(i) for i in range(len(sources))]
            on_batch(PredictedBatch(predictor, batch, probs.argmax(1), probs, [names[i] for i in ok],
                                    list(predictor.classes)))
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# operating points (lungxray predict --operating-point, the registered model's operating_point parameter)


def find_operating_point(predictor: Predictor, name: str) -> dict:
    """The model's operating point ``name``; an unknown name raises an error listing the model's ones (and, for a
    model that stores no threshold at all, such as an ensemble, saying where thresholds are found)."""
    from lungxray.core.errors import LungxrayError
    from lungxray.models.calibration import ARGMAX, argmax_only, operating_point

    ops = predictor.operating_points or argmax_only()
    if name not in ops and set(ops) == {ARGMAX}:
        raise LungxrayError(f"the model has no operating point {name!r}; it has only argmax: it stores no threshold "
                            f"(an ensemble's mean probability has none; each trained model gets its own at the end "
                            f"of training): use one trained model, e.g. `lungxray predict --model models/<model>`")
    return operating_point(ops, name)


def apply_operating_point(table: pd.DataFrame, predictor: Predictor, name: str) -> pd.DataFrame:
    """``table`` (output rows) with the flag column of the operating point ``name``: none for ``argmax`` (the
    ``predicted`` column is its decision); for ``<class>@...`` a column of that name before ``error``, true when
    ``prob_<class> >= threshold``, empty for an unusable input."""
    op = find_operating_point(predictor, name)
    if op["class"] is None:
        return table
    probs = table[prob_column(op["class"])]
    flag = (probs >= op["threshold"]).astype(object)
    flag[table[ERROR] != ""] = ""
    out = table.copy()
    out.insert(out.columns.get_loc(ERROR), name, flag)
    return out
