"""great_expectations, imported once, lazily (the import takes a few seconds), with its telemetry off."""

from __future__ import annotations

import warnings

from lungxray.core.stage import disable_telemetry


def import_gx():
    """The ``great_expectations`` module (telemetry disabled before the import, its import warnings silenced)."""
    disable_telemetry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import great_expectations as gx
    return gx
