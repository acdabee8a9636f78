"""Comparing models: the leaderboard (``leaderboard``), the promotion rule that picks the champion on val
(``promote``) and the CI metric gate (``gate``).

Each module's names without a leading underscore are its public API; an underscore name is the module's own.
The modules are listed in ``__all__`` and imported by name (``from lungxray.compare.<module> import ...``), never all
at once here, so that a stage's code closure (its ``dvc.yaml`` deps) holds only the modules it uses."""

__all__ = ["gate", "leaderboard", "promote"]
