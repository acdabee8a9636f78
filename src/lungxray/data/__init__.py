"""The data steps of the pipeline, one sub-package or module each, in pipeline order: ``fetch`` -> ``dedupe`` ->
``validate`` -> ``split`` (with ``assign`` and ``leakage``) -> ``preprocess``. This package only names them: import
the step you need, so that a stage's code closure (its ``dvc.yaml`` deps) holds only the steps it uses.

Each module's names without a leading underscore are its public API; an underscore name is the module's own.
The modules are listed in ``__all__`` and imported by name (``from lungxray.data.<module> import ...``), never all
at once here, so that a stage's code closure (its ``dvc.yaml`` deps) holds only the modules it uses."""

__all__ = ["assign", "dedupe", "fetch", "leakage", "preprocess", "split", "validate"]
