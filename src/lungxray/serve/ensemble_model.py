"""The registered ensemble: several trained models in one MLflow model, images in, their mean probabilities out.

The MLflow model carries every member's ``model.pt`` (as ``<member>.pt``) and a manifest, ``ensemble.json`` (the
members in order and their files). Each member is a :class:`lungxray.serve.predictor.Predictor`: it decodes and squares
an image with its own preprocessing and normalises it with its own mean/std, so members of different image sizes or
normalisations mix. :class:`EnsemblePredictor` classifies with every member and averages the probabilities; an input
that any member cannot use gets that member's reason in ``error``. Input and output are those of the single-model
:mod:`lungxray.serve.image_model` (same signature), so ``mlflow.pyfunc.load_model``, ``mlflow models serve``, the
register/promote rule and ``lungxray predict --model models:/<name>@champion`` take an ensemble like any model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lungxray.core.errors import LungxrayError
from lungxray.serve.image_model import ImageClassifier

MANIFEST = "ensemble.json"  # the artifact (and file name) listing the members and their model files


@dataclass
class EnsemblePredictor:
    """Several :class:`~lungxray.serve.predictor.Predictor` of one taxonomy; :func:`lungxray.serve.predictor.classify`
    hands it the inputs (see the module docstring)."""

    members: list  # Predictor, in the manifest's order
    names: list[str]
    source: str = ""
    batch_size: int = 32
    operating_points: dict = field(default_factory=dict)  # none fitted for the mean: argmax only (lungxray predict)

    @property
    def classes(self) -> list[str]:
        return list(self.members[0].classes)

    @property
    def architecture(self) -> str:
        return f"ensemble of {', '.join(self.names)}"

    @property
    def image_size(self) -> str:
        return "/".join(str(m.image_size) for m in self.members)

    @property
    def device(self):
        return self.members[0].device

    def contract(self) -> dict:
        """What the ensemble expects and returns (the MLflow model's metadata), with each member's own contract."""
        return {"classes": self.classes, "architecture": "ensemble", "members": list(self.names),
                "combine": "mean of the members' class probabilities; each member prepares the image its own way",
                "member_contracts": {n: m.contract() for n, m in zip(self.names, self.members)},
                "inputs": self.members[0].contract()["inputs"], "outputs": self.members[0].contract()["outputs"]}

    def classify(self, sources: Sequence, names: Sequence[str] | None = None,
                 on_batch: Callable | None = None) -> list[dict]:
        """One output row per source: the members' mean probabilities, or the first member's reason it failed.
        ``on_batch`` receives the classified images as one :class:`EnsembleBatch`."""
        from lungxray.serve.predictor import ERROR, classify, failed_row, prob_column, result_rows

        positions = [str(i) for i in range(len(sources))]  # the members' batches name each image by its position
        member_batches: list[list] = [[] for _ in self.members]
        per_member = [classify(m, sources, positions, seen.append if on_batch else None)
                      for m, seen in zip(self.members, member_batches)]
        rows = []
        for i in range(len(sources)):
            error = next((r[i][ERROR] for r in per_member if r[i][ERROR]), "")
            if error:
                rows.append(failed_row(self.classes, error))
                continue
            probs = np.mean([[r[i][prob_column(c)] for c in self.classes] for r in per_member], axis=0)
            rows.append(result_rows(probs[None], self.classes)[0])
        ok = [i for i, row in enumerate(rows) if not row[ERROR]]
        if on_batch is not None and ok:
            names = list(names) if names is not None else positions
            on_batch(self._batch(ok, [seen[0] for seen in member_batches], rows, [names[i] for i in ok]))
        return rows

    def _batch(self, ok: list[int], member_batches: list, rows: list[dict], files: list[str]) -> EnsembleBatch:
        """The ensemble's batch of the images every member classified (``ok``): each member's batch cut to them."""
        from lungxray.serve.predictor import prob_column

        members = []
        for b in member_batches:
            at = {int(f): p for p, f in enumerate(b.files)}
            sel = [at[i] for i in ok]
            members.append(replace(b, images=b.images[sel], predicted=b.predicted[sel], probs=b.probs[sel],
                                   files=[b.files[p] for p in sel]))
        probs = np.array([[rows[i][prob_column(c)] for c in self.classes] for i in ok])
        return EnsembleBatch(members, members[0].images, probs.argmax(1), probs, files, self.classes)


@dataclass
class EnsembleBatch:
    """One classified batch of the ensemble, as ``on_batch`` receives it (the fields of a
    :class:`~lungxray.serve.predictor.PredictedBatch`): the first member's square images (what an overlay is drawn on),
    the ensemble's predicted classes and mean probabilities, and each member's batch of the same images."""

    members: list  # PredictedBatch per member, row i of each is image i
    images: np.ndarray  # (N, S, S) uint8, the first member's
    predicted: np.ndarray  # (N,) the ensemble's classes
    probs: np.ndarray  # (N, C) the mean probabilities
    files: list[str]
    classes: list[str]

    def heatmaps(self, class_indices: Sequence[int] | None = None) -> np.ndarray:
        """The mean of the members' Grad-CAM maps for ``class_indices`` (default: the ensemble's predicted classes),
        each resized to the first member's image size: where the members agree the ensemble's class is shown."""
        from lungxray.evaluate.gradcam import resize_maps

        k = self.predicted if class_indices is None else class_indices
        size = self.images.shape[1]
        return np.mean([resize_maps(m.heatmaps(k), size) for m in self.members], axis=0)


def ensemble_predictor_from_manifest(path: str | Path, device: str = "auto") -> EnsemblePredictor:
    """An :class:`EnsemblePredictor` from an ``ensemble.json`` and the member files beside it."""
    from lungxray.serve.predictor import predictor_from_file

    path = Path(path)
    manifest = json.loads(path.read_text())
    members = [predictor_from_file(path.parent / manifest["files"][n], device) for n in manifest["members"]]
    differ = [n for n, m in zip(manifest["members"], members) if m.classes != members[0].classes]
    if differ:
        raise LungxrayError(f"{path}: members {differ} predict other classes than {manifest['members'][0]}")
    return EnsemblePredictor(members=members, names=list(manifest["members"]), source=str(path))


class EnsembleClassifier(ImageClassifier):
    """The registered ensemble (see the module docstring): :class:`ImageClassifier` over an
    :class:`EnsemblePredictor`."""

    def trained_predictor(self, context) -> EnsemblePredictor:
        return ensemble_predictor_from_manifest(context.artifacts[MANIFEST], device="auto")
