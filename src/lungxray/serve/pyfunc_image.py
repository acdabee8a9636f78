"""The model file of the registered image model (MLflow "models from code"): :func:`lungxray.serve.mlflow_models.
log_image_model` logs this file as the model, with the ``lungxray`` package beside it as the model's code, and
``mlflow.pyfunc.load_model`` runs it to build the model. So the model is code (this file) plus artifacts (its
``model.pt``), never a pickled Python object: it loads with whichever ``lungxray`` the model carries.

Nothing imports this module: importing it sets MLflow's current model.
"""

import mlflow

from lungxray.serve.image_model import ImageClassifier

mlflow.models.set_model(ImageClassifier())
