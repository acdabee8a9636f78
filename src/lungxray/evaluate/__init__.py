"""Evaluation of one trained model: ``evaluation.evaluate_model`` (test and val scores, plots, Grad-CAM grid),
``extras`` (calibration, TTA, operating points, the summary line), ``metrics`` (the numbers and their intervals),
``tta`` and ``gradcam``.

Each module's names without a leading underscore are its public API; an underscore name is the module's own.
The modules are listed in ``__all__`` and imported by name (``from lungxray.evaluate.<module> import ...``), never all
at once here, so that a stage's code closure (its ``dvc.yaml`` deps) holds only the modules it uses."""

__all__ = ["evaluation", "extras", "gradcam", "metrics", "tta"]
