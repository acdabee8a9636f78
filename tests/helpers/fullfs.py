"""A real small file system to fill: a tmpfs of a given size, mounted for one test (root only)."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def small_tmpfs(folder: Path, size: str = "1m") -> Iterator[Path]:
    """``folder`` as a tmpfs of ``size`` for the body; the test is skipped, with the reason, where mounting is not
    permitted (an ordinary user, a container without CAP_SYS_ADMIN: CI). Unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                           capture_output=True, text=True)
    except OSError as e:  # no mount command
        pytest.skip(f"a full disk needs a small tmpfs, and mounting one is not possible here: {e}")
    if r.returncode != 0:
        pytest.skip(f"a full disk needs a small tmpfs, and mounting one is not permitted here (root with "
                    f"CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
