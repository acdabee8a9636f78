"""The whole params file, every section checked at once: ``lungxray check-params`` (``make run`` runs it first).

Stages load only their own section (:func:`lungxray.core.config.load_section`); this module assembles every section
class, so a mistake in any section - or a section nobody reads (``fecth:``) - is found before the pipeline starts.
Stage scripts never import it (it imports every stage module, torch included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from lungxray.compare.gate import GateParams
from lungxray.compare.promote import PromotionParams
from lungxray.core.config import DEFAULT_PARAMS, FetchParams, Strict, read_params_file, validate_model
from lungxray.core.errors import ConfigError, LungxrayError
from lungxray.data.dedupe import DedupeParams
from lungxray.data.preprocess import PreprocessParams
from lungxray.data.split import SplitParams
from lungxray.data.validate import ValidateParams
from lungxray.ensemble.members import EnsembleParams, resolve_members
from lungxray.evaluate.metrics import EvaluateParams
from lungxray.external.plan import ExternalParams
from lungxray.external.shortcut import ShortcutParams
from lungxray.models.calibration import CalibrationParams
from lungxray.train.settings import TrainParams


class Params(Strict):
    fetch: FetchParams
    dedupe: DedupeParams = Field(default_factory=DedupeParams)
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    split: SplitParams = Field(default_factory=SplitParams)
    preprocess: PreprocessParams = Field(default_factory=PreprocessParams)
    shortcut: ShortcutParams = Field(default_factory=ShortcutParams)
    train: TrainParams = Field(default_factory=TrainParams)
    calibration: CalibrationParams = Field(default_factory=CalibrationParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    external: ExternalParams = Field(default_factory=ExternalParams)
    promote: PromotionParams = Field(default_factory=PromotionParams)
    gate: GateParams = Field(default_factory=GateParams)
    ensemble: EnsembleParams = Field(default_factory=EnsembleParams)

    @model_validator(mode="after")
    def _ensemble_members_are_trained(self) -> "Params":
        if self.ensemble.enabled:
            try:
                resolve_members(self.ensemble, self.train.models)
            except LungxrayError as e:
                raise ValueError(str(e)) from None
        return self

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
