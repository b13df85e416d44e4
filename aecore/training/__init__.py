"""Training: the run request, ``train`` and ``resume``, the default trainer and backend choice."""

from aecore.request import RunRequest
from aecore.training.run import TrainResult, resume, train

__all__ = ["RunRequest", "TrainResult", "resume", "train"]
