"""Shared entry-point wrapper for the thin scripts under ``stages/``."""

from __future__ import annotations

import os
import sys
from typing import Callable

from .errors import LungxrayError


def run_stage(name: str, body: Callable[[], None]) -> None:
    """Run a stage body; a :class:`LungxrayError` becomes a readable message and exit status 2."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    try:
        body()
    except LungxrayError as e:
        print(f"\nlungxray {name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\nlungxray {name}: interrupted; nothing partial was kept, rerun to resume", file=sys.stderr)
        sys.exit(130)
