"""Training: the run context, the default trainer and the ``train`` entry point."""

from aecore.training.context import RunContext
from aecore.training.run import TrainResult, resume, train

__all__ = ["RunContext", "TrainResult", "resume", "train"]
