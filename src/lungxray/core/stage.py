"""Shared entry-point wrapper for the thin scripts under ``stages/``."""

from __future__ import annotations

import os
import sys
from typing import Callable

from lungxray.core.errors import LungxrayError

# the pipeline runs offline and sends nothing home: DVC, MLflow and great-expectations usage analytics are off
TELEMETRY_OFF = {"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false"}


def disable_telemetry() -> None:
    """Turn off every library's usage analytics (stages, the ``lungxray`` command, and validate before it imports
    great-expectations). ``HF_HUB_OFFLINE`` is left alone: pretrained weights may still be downloaded."""
    os.environ.update(TELEMETRY_OFF)


def run_stage(name: str, body: Callable[[], None]) -> None:
    """Run a stage body; a :class:`LungxrayError` becomes a readable message and exit status 2."""
    disable_telemetry()
    try:
        body()
    except LungxrayError as e:
        print(f"\nlungxray {name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\nlungxray {name}: interrupted; nothing partial was kept, rerun to resume", file=sys.stderr)
        sys.exit(130)
