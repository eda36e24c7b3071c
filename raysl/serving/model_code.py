"""The code of every registered raysl encoder ("models from code"): what MLflow runs to load one.

It only names the model class; see :mod:`raysl.serving.pyfunc`.
"""

import mlflow.models

from raysl.serving.pyfunc import EncoderModel

mlflow.models.set_model(EncoderModel())
