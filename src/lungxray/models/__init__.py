"""The models: every architecture behind one door (``architectures.create_model``), the handcrafted CNNs, local
ImageNet weight files, using a network (``inference``), a trained model loaded from its ``model.pt`` (``trained``),
temperature and operating points (``calibration``), model files and code fingerprints (``checkpoint``).
Imports ``core``, ``images`` and ``data``.

Each module's names without a leading underscore are its public API; an underscore name is the module's own.
The modules are listed in ``__all__`` and imported by name (``from lungxray.models.<module> import ...``), never all
at once here, so that a stage's code closure (its ``dvc.yaml`` deps) holds only the modules it uses."""

__all__ = ["architectures", "calibration", "checkpoint", "handcrafted", "inference", "trained", "weights_file"]
