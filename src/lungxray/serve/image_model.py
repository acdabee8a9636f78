"""The registered MLflow model: images in, a table of class probabilities out.

The model carries the trained ``model.pt`` (an artifact) and the ``lungxray`` package (``code_paths``), so that
``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work anywhere the libraries are installed, outside the
repository too. It applies the pipeline's own preprocessing (:class:`lungxray.serve.predict.Predictor`: decode, square
with the preprocess settings the model was trained with, normalise with its mean/std).

Input: a table with a column ``image`` (a ``pandas.DataFrame``, a dict ``{"image": [...]}``, or JSON over HTTP:
``{"dataframe_split": {"columns": ["image"], "data": [[<base64>], ...]}}``, ``{"dataframe_records": [{"image":
<base64>}, ...]}``, ``{"inputs": {"image": [<base64>, ...]}}`` or ``{"instances": [{"image": <base64>}, ...]}``). Each
cell is one image: a file path, the file's bytes (PNG, JPEG, DICOM, ...), the base64 of those bytes (a string), or a
uint8 greyscale array (H, W) (``{"image": array}`` with an (N, H, W) array works too). The column is declared
``string``, so the MLflow server hands every cell to the model as sent and each one is decoded here, on its own: an
invalid base64 cell gets its own error row instead of failing the request (a column declared ``binary``, as in models
logged before, is decoded by the server, where one bad cell fails them all). A path is opened only in Python: a
served model (MLflow's scoring server, :func:`serving`) decodes every string as base64, so a client cannot make the
server read its files.

Output: one row per input, in order: ``predicted`` (class name), one ``prob_<class>`` per class (summing to 1) and
``error``. The probabilities are calibrated: ``softmax(logits / T)`` with the temperature ``T`` fitted on the val
split at the end of training (:mod:`lungxray.models.calibration`); the model's metadata records ``T`` and the operating
points chosen on val (``argmax``, ``<class>@sens95``, ``<class>@youden``: flag the class when ``prob_<class> >=
threshold``). An input that cannot be used does not fail the request: its row has an empty ``predicted``, no
probabilities and the reason in ``error`` (empty for the others). "No probabilities" is NaN in Python and ``null`` in
a served answer (NaN is not JSON: strict parsers refuse it).

An input that the pipeline would not have used is refused the same way: over ``max_pixels`` (decompression bombs;
the model takes at most :data:`lungxray.images.decode.DEFAULT_MAX_PIXELS` pixels) or smaller than the validate stage's
minimum width and height (:class:`lungxray.data.validate.ValidateParams`' defaults).

Parameter ``operating_point`` (default ``argmax``; ``params={"operating_point": "pneumonia@sens95"}`` in Python,
``"params": {...}`` beside ``dataframe_split`` over HTTP): one of the stored operating points. Other than ``argmax``
it adds a column of that name before ``error``: true when ``prob_<class> >= threshold``, empty for an unusable
input (the same rule as ``lungxray predict --operating-point``). An unknown name fails the request with the list of
the model's operating points.
"""

from __future__ import annotations

import base64
import binascii
import io
import os

import mlflow.pyfunc
import numpy as np
import pandas as pd

from lungxray.models.calibration import ARGMAX

IMAGE_COLUMN = "image"
OPERATING_POINT = "operating_point"  # the predict parameter (see the module docstring)
SERVING_FLAG = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"  # set by MLflow's scoring server (models serve, models predict)
SERVED_FORMS = ('{"dataframe_split": {"columns": ["image"], "data": [[<base64>], ...]}}, '
                '{"dataframe_records": [{"image": <base64>}, ...]}, {"inputs": {"image": [<base64>, ...]}} or '
                '{"instances": [{"image": <base64>}, ...]}')


def serving() -> bool:
    """Whether this process is MLflow's scoring server (``mlflow models serve``, ``mlflow models predict``), which
    says so in the environment before it loads the model: then a string is never opened as a path, and a missing
    probability is answered as ``null``."""
    return os.environ.get(SERVING_FLAG, "").strip().lower() in ("true", "1")


def decode_cell(cell, open_paths: bool = True):
    """One input cell as what :meth:`lungxray.serve.predict.Predictor.square` takes: a path (only with ``open_paths``),
    bytes or a uint8 array; a string that is no path is base64 (whitespace in it ignored, as in MIME's line-wrapped
    base64). Raises ValueError (with the reason) when it is none of those."""
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell)
    if isinstance(cell, (np.ndarray, list)):
        arr = np.asarray(cell)
        if arr.dtype.kind in "ui" and arr.size and arr.min() >= 0 and arr.max() <= 255:
            arr = arr.astype(np.uint8)  # integers from JSON or a list: grey levels
        return arr
    if isinstance(cell, str):
        if open_paths and os.path.isfile(cell):
            return cell
        try:
            return base64.b64decode("".join(cell.split()), validate=True)
        except (binascii.Error, ValueError):
            if open_paths:
                raise ValueError("neither an existing file nor base64-encoded image bytes") from None
            raise ValueError("not base64-encoded image bytes: a served model takes each image as the base64 of its "
                             "file's bytes (it opens no path)") from None
    raise ValueError(f"an image must be a path, bytes or a uint8 array, not {type(cell).__name__}")


def input_cells(model_input) -> list:
    """The image cells of any accepted input (see the module docstring)."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input:
            raise ValueError(f"the input needs a column {IMAGE_COLUMN!r} (got {list(model_input.columns)}); over "
                             f"HTTP: {SERVED_FORMS}")
        cells = list(model_input[IMAGE_COLUMN])
        if len(cells) == 1 and isinstance(cells[0], (list, np.ndarray)) and np.asarray(cells[0]).dtype.kind in "USO":
            return list(cells[0])  # {"image": [path, ...]}: MLflow makes the list one row
        return cells
    if isinstance(model_input, dict):
        value = model_input[IMAGE_COLUMN]
        return list(value) if not isinstance(value, (str, bytes)) else [value]
    if isinstance(model_input, np.ndarray) and model_input.ndim == 3:
        return list(model_input)
    if isinstance(model_input, (list, tuple, pd.Series)):
        return list(model_input)
    raise ValueError(f"unsupported input {type(model_input).__name__}: pass a table with a column {IMAGE_COLUMN!r} "
                     f"(over HTTP: {SERVED_FORMS})")


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """The lungxray image model (see the module docstring)."""

    def load_context(self, context) -> None:
        from lungxray.core.schema import DEFAULT_MAX_PIXELS
        from lungxray.serve.predictor import set_input_limits

        self.predictor = self.trained_predictor(context)
        set_input_limits(self.predictor, max_pixels_hint=f"the registered model decodes at most {DEFAULT_MAX_PIXELS} "
                                                         f"pixels: send a smaller image")

    def trained_predictor(self, context):
        """The predictor of the model's artifacts."""
        from lungxray.serve.predictor import MODEL_ARTIFACT, predictor_from_file

        return predictor_from_file(context.artifacts[MODEL_ARTIFACT], device="auto")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """One output row per input row (see the module docstring). ``model_input`` is a table once MLflow has
        applied the signature; called directly, any form :func:`input_cells` takes."""
        from lungxray.serve.predictor import classify, failed_row

        cells, sources, errors, open_paths = input_cells(model_input), [], [], not serving()
        for cell in cells:
            try:
                sources.append(decode_cell(cell, open_paths))
                errors.append(None)
            except ValueError as e:
                sources.append(None)
                errors.append(str(e))
        good = [i for i, e in enumerate(errors) if e is None]
        rows = [failed_row(self.predictor.classes, e) for e in errors]
        for i, row in zip(good, classify(self.predictor, [sources[i] for i in good])):
            rows[i] = row
        table = pd.DataFrame(rows, columns=output_columns(self.predictor.classes))
        table = with_operating_point(table, self.predictor, (params or {}).get(OPERATING_POINT) or ARGMAX)
        return json_nulls(table) if serving() else table


def json_nulls(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with every missing value (a failed row's probabilities) as None, which the server writes as JSON
    ``null``; NaN would be written as ``NaN``, which is not JSON."""
    return table.astype(object).where(table.notna(), None)


def with_operating_point(table: pd.DataFrame, predictor, name: str) -> pd.DataFrame:
    """``table`` with the flag column of the operating point ``name``
    (:func:`lungxray.serve.predictor.apply_operating_point`); an unknown name is the caller's error (HTTP 400 when
    served), naming the model's operating points."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from lungxray.core.errors import LungxrayError
    from lungxray.serve.predictor import apply_operating_point

    try:
        return apply_operating_point(table, predictor, name)
    except LungxrayError as e:
        raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None


def output_columns(classes) -> list[str]:
    from lungxray.serve.predictor import ERROR, PREDICTED, prob_column

    return [PREDICTED, *map(prob_column, classes), ERROR]


def signature(classes):
    """Input: one ``string`` column ``image`` (the server hands each base64 cell to :func:`decode_cell` as sent; in
    Python a cell may be anything :func:`decode_cell` takes); output: ``predicted``, ``prob_<class>``..., ``error``;
    parameter ``operating_point`` (default ``argmax``)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from lungxray.serve.predictor import ERROR, PREDICTED, prob_column

    return ModelSignature(inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
                          outputs=Schema([ColSpec("string", PREDICTED), *[ColSpec("double", prob_column(c))
                                                                          for c in classes],
                                          ColSpec("string", ERROR)]),
                          params=ParamSchema([ParamSpec(OPERATING_POINT, "string", ARGMAX)]))


def input_example() -> pd.DataFrame:
    """One input row as a served request sends it: the base64 of a 64x64 greyscale PNG (a gradient, no X-ray). It is
    logged with the model (the example ``mlflow ui`` and ``mlflow models serve`` show), and MLflow checks at logging
    time that the logged model loads and answers it."""
    from PIL import Image

    ramp = np.linspace(0, 255, 64).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(np.add.outer(ramp // 2, ramp // 2)).save(png, format="PNG")
    return pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(png.getvalue()).decode("ascii")]})
