"""Training: the run request, ``train`` and ``resume``, the default trainer and backend choice."""

from aecore.request import RunRequest
from aecore.training.run import TrainResult, check_request, resume, train

__all__ = ["RunRequest", "TrainResult", "check_request", "resume", "train"]
