"""Training: ``fit.train_model`` (build, resume, fit, finalise), the run's state and checkpoint (``state``), the epoch
loop (``loop``), each model's resolved settings (``settings``), weight averaging, warm-up and multi-process runs.
Imports nothing of evaluation, serving, Grad-CAM or the registry, so an edit there never changes a training
fingerprint or a ``train@`` dependency.

Each module's names without a leading underscore are its public API; an underscore name is the module's own.
The modules are listed in ``__all__`` and imported by name (``from lungxray.train.<module> import ...``), never all
at once here, so that a stage's code closure (its ``dvc.yaml`` deps) holds only the modules it uses."""

__all__ = ["averaging", "distributed", "fit", "loop", "settings", "state", "warmup"]
