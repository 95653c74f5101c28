"""dltrain: a plugin-based distributed trainer with a Lightning-style API.

Example:
    >>> import dltrain
    >>> trainer = dltrain.Trainer(max_epochs=3)
    >>> trainer.fit(MyTask(), train_loader, val_loader)  # doctest: +SKIP
"""

from dltrain.callbacks.base import Callback
from dltrain.errors import CheckpointError, ConfigurationError, DataError, DltrainError, StepError
from dltrain.task import Task
from dltrain.trainer import Trainer, seed_everything

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "CheckpointError",
    "ConfigurationError",
    "DataError",
    "DltrainError",
    "StepError",
    "Task",
    "Trainer",
    "__version__",
    "seed_everything",
]
