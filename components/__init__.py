"""KFP lightweight components: each reads its inputs, calls one ganforge step, writes outputs."""

from .end_run import end_run
from .evaluate import evaluate
from .prep_data import prep_data
from .register import register
from .start_run import start_run
from .train import train

__all__ = [
    "start_run",
    "prep_data",
    "train",
    "evaluate",
    "register",
    "end_run",
]
