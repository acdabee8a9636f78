"""The model file of the registered ensemble (MLflow "models from code"): :func:`lungxray.serve.mlflow_models.
log_ensemble_model` logs this file as the model, with the ``lungxray`` package beside it as the model's code, and
``mlflow.pyfunc.load_model`` runs it to build the model. So the model is code (this file) plus artifacts (the
members' ``model.pt`` and the manifest), never a pickled Python object.

Nothing imports this module: importing it sets MLflow's current model.
"""

import mlflow

from lungxray.serve.ensemble_model import EnsembleClassifier

mlflow.models.set_model(EnsembleClassifier())
