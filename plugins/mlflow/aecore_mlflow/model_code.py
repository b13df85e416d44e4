"""What MLflow runs to rebuild an aecore model (models from code): the class, nothing pickled.

MLflow copies this file into every logged model and executes it on load;
the weights come from the model's ``checkpoint`` artifact.
"""

from mlflow.models import set_model

from aecore_mlflow.pyfunc import AecoreModel

set_model(AecoreModel())
