"""The ``lungxray`` command (``main``; its option checks in ``arguments``) and its settings reference (``params_check``,
``params_doc``)."""

from lungxray.cli.commands import main

__all__ = ["main"]
