"""Using a trained model outside the pipeline: the predictor (files in, probabilities out), the MLflow pyfunc models
(``image_model``, ``ensemble_model``) and ``lungxray predict`` (``predict``).

Each module's names without a leading underscore are its public API; an underscore name is the module's own.
The modules are listed in ``__all__`` and imported by name (``from lungxray.serve.<module> import ...``), never all
at once here, so that a stage's code closure (its ``dvc.yaml`` deps) holds only the modules it uses."""

__all__ = ["ensemble_model", "image_model", "mlflow_models", "predict", "predictor"]
