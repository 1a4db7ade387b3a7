"""MLflow models-from-code entry point of a generator run's pyfunc model (see ``orchestrator.mlflow_model``).

MLflow copies this file into the logged model and runs it at ``mlflow.pyfunc.load_model``; it only imports
the installed package, so no Python object is unpickled when a model is loaded.
"""
from mlflow.models import set_model

from orchestrator.mlflow_model import FewShotGenerator

set_model(FewShotGenerator())
