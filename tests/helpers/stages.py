"""Running a real stage script (``stages/<script>``) in a scratch repository, with this checkout's code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_stage_script(work: Path, script: str, *args: str) -> str:
    """Run ``stages/<script> args`` in ``work`` (its params.yaml, its outputs); fail the test with the script's output
    unless it exits 0; return its stdout."""
    r = subprocess.run([sys.executable, str(REPO / "stages" / script), *args], cwd=work, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout
