"""``dltrain.tuner``: Lightning's ``Tuner`` (learning-rate range test, batch-size search), also under DDP/FSDP2.

Each search runs as short fits of the user's own Trainer and task; afterwards the task's weights, the Trainer's
settings, callbacks, loggers and loop state, and the random number generators are as they were, so the fit that
follows is the one the user would have run with the value found. Under ``torchrun`` every rank ends with the same
answer (the losses of the range test are averaged over the ranks; the ranks agree on each batch-size trial).
"""

from dltrain.tuner.lr_finder import LRFinder
from dltrain.tuner.tuning import Tuner

__all__ = ["LRFinder", "Tuner"]
