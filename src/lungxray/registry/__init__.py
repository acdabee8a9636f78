"""The MLflow model registry (``register``: versions and the champion alias) and the team MLflow server
(``server``).

Each module's names without a leading underscore are its public API; an underscore name is the module's own.
The modules are listed in ``__all__`` and imported by name (``from lungxray.registry.<module> import ...``), never all
at once here, so that a stage's code closure (its ``dvc.yaml`` deps) holds only the modules it uses."""

__all__ = ["register", "server", "versions"]
