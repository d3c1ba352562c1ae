"""The platform layer: S3 storage, MLflow tracking and registry, cluster launch (TrainJob /
PyTorchJob), the pipeline steps the KFP components call, and deployment settings.

Its dependencies (boto3, mlflow, kfp, kubernetes) come with ``pip install 'ganforge[platform]'``;
the core (``ganforge`` outside this package) never imports it at module level.
"""
