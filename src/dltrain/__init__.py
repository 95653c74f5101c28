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
from dltrain.states import RunningStage, TrainerFn, TrainerState, TrainerStatus
from dltrain.strategies import FSDP2, FaultTolerant
from dltrain.task import Task

if TYPE_CHECKING:
    from lightning.fabric.utilities.warnings import disable_possible_user_warnings

    from dltrain._config_cli import CLI
    from dltrain.trainer import Trainer, seed_everything

try:  # the version lives in pyproject.toml only; an installed (or editable) dltrain carries it in its metadata
    __version__ = _distribution_version("dltrain")
except PackageNotFoundError:  # a source tree put on sys.path without installing it
    __version__ = "0+unknown"

__all__ = [
    "CLI",
    "FSDP2",
    "LIGHTNING_LOGO",
    "Callback",
    "CheckpointError",
    "ConfigurationError",
    "DataError",
    "DataModule",
    "DltrainError",
    "FaultTolerant",
    "RunningStage",
    "StepError",
    "Task",
    "Trainer",
    "TrainerFn",
    "TrainerState",
    "TrainerStatus",
    "__version__",
    "cli_lightning_logo",
    "disable_possible_user_warnings",
    "seed_everything",
]

# Lightning's names for its banner, kept so that a script renamed from Lightning runs (every example of Lightning's
# starts with ``cli_lightning_logo()``); the banner is dltrain's.
LIGHTNING_LOGO = """
     _ _ _             _
  __| | | |_ _ __ __ _(_)_ __
 / _` | | __| '__/ _` | | '_ \\
| (_| | | |_| | | (_| | | | | |
 \\__,_|_|\\__|_|  \\__,_|_|_| |_|
"""


def cli_lightning_logo() -> None:
    """Print dltrain's banner (Lightning's function of that name prints Lightning's)."""
    print(f"\n{LIGHTNING_LOGO}\n")


def __getattr__(name: str) -> Any:
    if name == "CLI":  # imports the Trainer and jsonargparse
        from dltrain._config_cli import CLI

        return CLI
    if name == "disable_possible_user_warnings":  # Lightning's: dltrain warns with its PossibleUserWarning class
        from lightning.fabric.utilities.warnings import disable_possible_user_warnings

        return disable_possible_user_warnings
    if name in ("Trainer", "seed_everything"):
        from dltrain import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'dltrain' has no attribute {name!r}")
