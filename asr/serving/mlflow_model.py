"""The MLflow "model from code" of an ``asr`` bundle: MLflow runs this file when it loads the model.

Logged by :func:`asr.serving.pyfunc.log_model`; the bundle itself is the model's artifact ``bundle``.
Nothing in ``asr`` imports this file (``set_model`` is meant to run only under MLflow's loader).
"""

from mlflow.models import set_model

from asr.serving.pyfunc import AsrPyfuncModel

set_model(AsrPyfuncModel())
