"""Settings of the validate stage (the ``validate`` section of params.yaml): image size bounds, the class minimum, which
optional checks run and how many failing rows a report shows."""

from __future__ import annotations

from pydantic import Field, model_validator

from lungxray.core.config import Strict

MAX_EXAMPLES = 5


class ValidateParams(Strict):
    """Parameters of the validation stage (``validate`` section of params.yaml)."""

    min_width: int = Field(32, ge=1, description="smallest accepted image width in pixels")
    max_width: int = Field(20000, ge=1, description="largest accepted image width in pixels")
    min_height: int = Field(32, ge=1, description="smallest accepted image height in pixels")
    max_height: int = Field(20000, ge=1, description="largest accepted image height in pixels")
    min_per_class: int = Field(1, ge=0, description="fewest images each required class must have")
    required_classes: list[str] | None = Field(
        None, description="classes that must reach min_per_class; None = every class of the taxonomy"
    )
    count_kept_only: bool = Field(True, description="count only kept (deduplicated) images towards min_per_class")
    check_files_exist: bool = Field(True, description="check that every manifest path exists under the repo root")
    check_sha256_format: bool = Field(True, description="check that sha256 is 64 lower-case hex digits")
    max_examples: int = Field(MAX_EXAMPLES, ge=0, le=100, description="example rows kept per failed check")

    @model_validator(mode="after")
    def _bounds(self) -> "ValidateParams":
        if self.min_width > self.max_width:
            raise ValueError(f"min_width ({self.min_width}) is larger than max_width ({self.max_width})")
        if self.min_height > self.max_height:
            raise ValueError(f"min_height ({self.min_height}) is larger than max_height ({self.max_height})")
        return self
