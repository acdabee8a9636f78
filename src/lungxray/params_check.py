"""The whole params file, every section checked at once: ``lungxray check-params`` (``make run`` runs it first).

Stages load only their own section (:func:`lungxray.config.load_section`); this module assembles every section
class, so a mistake in any section - or a section nobody reads (``fecth:``) - is found before the pipeline starts.
Stage scripts never import it (it imports every stage module, torch included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from .calibration import CalibrationParams
from .config import DEFAULT_PARAMS, FetchParams, Strict, read_params_file, validate_model
from .dedupe import DedupeParams
from .errors import ConfigError
from .metrics import EvaluateParams
from .gate import GateParams
from .preprocess import PreprocessParams
from .promote import PromotionParams
from .split import SplitParams
from .train_settings import TrainParams
from .validate import ValidateParams


class Params(Strict):
    fetch: FetchParams
    dedupe: DedupeParams = Field(default_factory=DedupeParams)
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    split: SplitParams = Field(default_factory=SplitParams)
    preprocess: PreprocessParams = Field(default_factory=PreprocessParams)
    train: TrainParams = Field(default_factory=TrainParams)
    calibration: CalibrationParams = Field(default_factory=CalibrationParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    promote: PromotionParams = Field(default_factory=PromotionParams)
    gate: GateParams = Field(default_factory=GateParams)

    @property
    def validate_params(self) -> ValidateParams:
        return self.validate_


def parse_params(data: Any, origin: str = "params.yaml") -> Params:
    """Every section of ``data`` validated; an unknown top-level section is an error like an unknown key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must be a mapping of sections (fetch:, dedupe:, ...), got {type(data).__name__}")
    return validate_model(Params, data, origin)


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """The whole params file, checked (for ``lungxray check-params``, the metrics commands and benchmarks)."""
    return parse_params(read_params_file(path), str(path))
