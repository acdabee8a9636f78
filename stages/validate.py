"""DVC stage `validate`: great-expectations checks of the manifest and the dedupe groups; stops on a violation."""

import pandas as pd

from lungxray.core import schema
from lungxray.core.config import FetchParams, load_sections
from lungxray.core.errors import LungxrayError
from lungxray.core.io import file_fingerprints
from lungxray.core.stage import run_stage
from lungxray.data.validate import ValidateParams, format_failures, validate_tables, write_report


def main() -> None:
    params = load_sections({"fetch": FetchParams, "validate": ValidateParams})
    manifest = pd.read_csv(schema.MANIFEST, keep_default_na=False)
    groups = pd.read_csv(schema.GROUPS, keep_default_na=False)
    inputs = file_fingerprints([schema.MANIFEST, schema.GROUPS])  # split runs only on what passed here
    result = validate_tables(manifest, groups, params.fetch.classes, params.validate, inputs=inputs)
    write_report(result, schema.VALIDATION_REPORT, schema.VALIDATION_DOCS)  # written either way
    if not result.success:
        raise LungxrayError(f"data validation failed (report: {schema.VALIDATION_REPORT}):\n{format_failures(result)}")
    print(f"validate: all checks passed; report: {schema.VALIDATION_REPORT}")


if __name__ == "__main__":
    run_stage("validate", main)
