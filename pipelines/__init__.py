"""The DAG factory and the ways to run it: locally (kfp.local), compiled, submitted, scheduled."""
from .factory import PIPELINES, build_pipeline

__all__ = ["PIPELINES", "build_pipeline"]
