"""The ``lungxray`` command's option checks: numeric argparse ``type`` checks (:func:`at_least`, :func:`port_number`) and
:func:`check_writable` for an output, so that a bad option is told in one line (exit status 2) before any work."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungxray.core.errors import LungxrayError


def at_least(low: int):
    """An argparse ``type``: an integer >= ``low``, or the option's error (exit status 2) saying so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def port_number(text: str) -> int:
    """An argparse ``type``: a TCP port, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 65535, got {text!r}")
    return value


def check_writable(path: str, option: str, folder: bool = False) -> None:
    """Stop with a usage error unless ``path`` (a file, or with ``folder`` a folder) can be written: the folder that
    holds it is created now (it would be anyway) and a scratch file is made in it, so a folder that cannot be
    created or written in (read-only, below a file, in /proc) is told before any work."""
    import tempfile

    target = Path(path)
    if not folder and target.is_dir():
        raise LungxrayError(f"{option} {path} is a folder: give the file to write, e.g. {target / 'predictions.csv'}")
    where = target if folder else target.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as e:
        raise LungxrayError(f"{option} {path}: cannot write in the folder {where} "
                            f"({e.strerror or type(e).__name__}): choose a place you can write to") from None
