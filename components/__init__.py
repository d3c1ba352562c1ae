"""KFP lightweight components: each reads its inputs, calls one ganforge step, writes outputs."""

from .end_run import end_run
from .evaluate import evaluate
from .evaluate_classes import evaluate_classes
from .prep_data import prep_data
from .register import register
from .start_run import start_run
from .train import train

__all__ = ["start_run", "prep_data", "train", "evaluate", "evaluate_classes", "register", "end_run"]
