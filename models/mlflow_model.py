"""The file MLflow loads the registered model from ("models from code": nothing is pickled).

It registers the model object when MLflow imports it, which is the point of this file; nothing
else in freshrec imports it.
"""

from mlflow.models import set_model

from models.pyfunc import RecommenderModel

set_model(RecommenderModel())
