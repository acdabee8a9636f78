"""A local weights file (``train.model_options.<model>.weights_file``) for
:func:`lungxray.models.architectures.create_model`.

* The file must exist, and match ``weights_sha256`` when one is given (:func:`check_weights_file`).
* It is read with timm's loader: ``.safetensors`` or ``.pth``/``.bin`` state dicts, ``{'state_dict': ...}`` wrappers
  and ``module.`` prefixes (:func:`load_state_dict_file`).
* timm loads pretrained files non-strictly and only logs the keys it missed (it drops the classifier when the number
  of classes differs): :class:`TimmLoadReport` collects them, and :func:`check_covers_backbone` refuses a file that
  leaves any weight but the classifier's unloaded (at random init). Keys the model does not use are logged, not
  refused.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

import torch

from lungxray.core.errors import LungxrayError
from lungxray.core.io import sha256_file

log = logging.getLogger(__name__)


def check_weights_file(name: str, weights_file: str | Path, weights_sha256: str | None) -> Path:
    path = Path(weights_file).expanduser()
    if not path.is_file():
        raise LungxrayError(f"weights file for model {name!r} not found: {path} (set weights_file to an existing "
                            f".pth/.safetensors state dict)")
    if weights_sha256:
        actual = sha256_file(path)
        if actual.lower() != weights_sha256.strip().lower():
            raise LungxrayError(f"sha256 mismatch for weights file {path} of model {name!r}: expected "
                                f"{weights_sha256.strip().lower()}, got {actual} (wrong or corrupt file?)")
    return path


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    from timm.models import load_state_dict  # handles .safetensors, {'state_dict': ...} wrappers, 'module.' prefix

    try:
        return load_state_dict(str(path), weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error
        raise LungxrayError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from e


class TimmLoadReport(logging.Handler):
    """Collects the missing/unexpected keys that timm's ``load_pretrained`` reports (it loads non-strictly, and only
    logs them, when the classifier is replaced because ``num_classes`` differs from the file's)."""

    _PATTERN = re.compile(r"^(Missing|Unexpected) keys \((.*)\) (?:discovered|found) while loading", re.S)

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.missing: list[str] = []
        self.unexpected: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = self._PATTERN.match(record.getMessage())
        if match:
            keys = [k for k in match.group(2).split(", ") if k]
            (self.missing if match.group(1) == "Missing" else self.unexpected).extend(keys)

    @contextlib.contextmanager
    def attached(self):
        logger = logging.getLogger("timm.models._builder")
        old_level = logger.level
        logger.addHandler(self)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(old_level)


def check_covers_backbone(name: str, path: Path, report: TimmLoadReport, head_params: set[str]) -> None:
    """Refuse a file that leaves backbone weights of the model unloaded (left at random init)."""
    missing = sorted(k for k in report.missing if k not in head_params)
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise LungxrayError(f"weights file {path} does not match model {name!r}: {len(missing)} of its weights are not "
                            f"in the file ({shown}); is it a state dict of this architecture with timm's parameter "
                            f"names?")
    if report.unexpected:
        log.warning("weights file %s has %d keys that model %r does not use (ignored): %s", path,
                    len(report.unexpected), name, ", ".join(report.unexpected[:5]))
