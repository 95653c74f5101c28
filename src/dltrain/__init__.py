"""dltrain: a plugin-based distributed trainer with a Lightning-style API.

Example:
    >>> import dltrain
    >>> trainer = dltrain.Trainer(max_epochs=3)
    >>> trainer.fit(task, train_loader, val_loader)  # task: a dltrain.Task; the loaders: any DataLoaders

``Trainer`` and ``seed_everything`` are imported on first use: they need Lightning Fabric, whose import pulls in
torchmetrics (and, through it, torchvision when installed), which costs seconds. ``import dltrain``, the data
layer and the ``dltrain`` command line stay quick, and ``import dltrain`` imports no plugin.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version
from typing import TYPE_CHECKING, Any

from dltrain.callbacks.base import Callback
from dltrain.datamodule import DataModule
from dltrain.errors import CheckpointError, ConfigurationError, DataError, DltrainError, StepError
from dltrain.strategies import FSDP2, FaultTolerant
from dltrain.task import Task

if TYPE_CHECKING:
    from dltrain._config_cli import CLI
    from dltrain.trainer import Trainer, seed_everything

try:  # the version lives in pyproject.toml only; an installed (or editable) dltrain carries it in its metadata
    __version__ = _distribution_version("dltrain")
except PackageNotFoundError:  # a source tree put on sys.path without installing it
    __version__ = "0+unknown"

__all__ = [
    "CLI",
    "FSDP2",
    "Callback",
    "CheckpointError",
    "ConfigurationError",
    "DataError",
    "DataModule",
    "DltrainError",
    "FaultTolerant",
    "StepError",
    "Task",
    "Trainer",
    "__version__",
    "seed_everything",
]


def __getattr__(name: str) -> Any:
    if name == "CLI":  # imports the Trainer and jsonargparse
        from dltrain._config_cli import CLI

        return CLI
    if name in ("Trainer", "seed_everything"):
        from dltrain import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'dltrain' has no attribute {name!r}")
