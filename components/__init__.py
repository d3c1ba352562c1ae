"""KFP lightweight components: each reads its inputs, calls one ganforge step, writes outputs."""

from .end_run import end_run
from .evaluate import evaluate
from .evaluate_classes import evaluate_classes
from .evaluate_translation import evaluate_translation
from .prep_data import prep_data
from .prep_domain import prep_domain
from .register import register
from .start_run import start_run
from .train import train
from .train_translation import train_translation

__all__ = [
    "start_run",
    "prep_data",
    "prep_domain",
    "train",
    "train_translation",
    "evaluate",
    "evaluate_classes",
    "evaluate_translation",
    "register",
    "end_run",
]
