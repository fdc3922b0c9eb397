"""srcore: the one place where the SRGAN pipeline's behaviour lives.

Every entry point (the `srgan` CLI, `mlflow run`, the Kubeflow components) is a thin
shell over the step functions here: ingest -> train -> evaluate -> register.
"""

__version__ = "0.1.0"
