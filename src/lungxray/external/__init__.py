"""Does a model hold beyond its sources? Leave-one-source-out folds (``plan``, ``folds``, ``run``, ``report``) and
the shortcut check (``shortcut``: can a small network tell the source from the pixels?).

Each module's names without a leading underscore are its public API; an underscore name is the module's own.
The modules are listed in ``__all__`` and imported by name (``from lungxray.external.<module> import ...``), never all
at once here, so that a stage's code closure (its ``dvc.yaml`` deps) holds only the modules it uses."""

__all__ = ["folds", "plan", "report", "run", "shortcut"]
