"""The served upscaler as MLflow "models from code": MLflow runs this file to build the
pyfunc model (srcore.serving.log_upscaler logs it), so no cloudpickle is involved.
The limits arrive as the model's model_config in SRUpscaler.load_context."""

import mlflow

from srcore.serving import SRUpscaler

mlflow.models.set_model(SRUpscaler())
