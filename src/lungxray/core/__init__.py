"""The ground floor: errors, atomic file writes, paths and column names (``schema``), typed settings (``config``),
worker pools, headless figures, the device, number formatting, graphs, the stage runner and MLflow run tracking.
Nothing here imports another lungxray package.

Each module's names without a leading underscore are its public API; an underscore name is the module's own.
The modules are listed in ``__all__`` and imported by name (``from lungxray.core.<module> import ...``), never all
at once here, so that a stage's code closure (its ``dvc.yaml`` deps) holds only the modules it uses."""

__all__ = ["config", "device", "errors", "graph", "io", "numbers", "parallel", "plots", "schema", "stage", "tracking"]
