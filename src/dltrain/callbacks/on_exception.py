"""`OnExceptionCheckpoint`: a checkpoint when a stage stops on an exception (Lightning's)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from dltrain.callbacks.base import Checkpoint
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["OnExceptionCheckpoint"]


class OnExceptionCheckpoint(Checkpoint):
    """Save ``<dirpath>/<filename>.ckpt`` when ``fit`` stops on an exception (an error, Ctrl-C).

    The run can resume from it (``ckpt_path=...``); a later run that ends normally removes it.

    The checkpoint is taken where the exception stopped the batch: a resume from it goes on with the batch after
    the one that raised (which may be what made it fail: bad data, a sample too large for memory). Every rank must
    reach the exception handler (an error on one rank stops the others through dltrain's
    watchdog); a save that cannot complete is reported on stderr and the original exception goes on.

    Args:
        dirpath: the folder of the checkpoint.
        filename: its name without the ``.ckpt`` extension.

    Example:
        >>> class Fails(dltrain.Callback):
        ...     def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        ...         if trainer.global_step == 3:
        ...             raise RuntimeError("stopped on purpose")
        >>> saver = OnExceptionCheckpoint(dirpath="runs/crash")
        >>> trainer = dltrain.Trainer(max_epochs=2, callbacks=[saver, Fails()], logger=False, enable_progress_bar=False)
        >>> try:
        ...     trainer.fit(task, train_loader)
        ... except RuntimeError:
        ...     pass
        >>> saver.ckpt_path, os.path.exists(saver.ckpt_path)
        ('runs/crash/on_exception.ckpt', True)
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike[str], filename: str = "on_exception") -> None:
        if not filename:
            raise ConfigurationError("OnExceptionCheckpoint(filename=''): the filename cannot be empty")
        self.dirpath = dirpath
        self.filename = filename

    @property
    def ckpt_path(self) -> str:
        """The file this callback writes: ``<dirpath>/<filename>.ckpt``."""
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    @override
    def on_exception(self, trainer: TrainerView, task: Task, exception: BaseException) -> None:
        if trainer.stage != "fit":
            return
        try:
            trainer.save_checkpoint(self.ckpt_path)
        except Exception as err:  # the exception that stopped the run is what the user must see
            import sys

            sys.stderr.write(f"[dltrain] OnExceptionCheckpoint could not save {self.ckpt_path}: {err}\n")

    @override
    def teardown(self, trainer: TrainerView, task: Task, stage: str) -> None:
        # A run that ended normally leaves no stale exception checkpoint behind (as Lightning's).
        if stage == "fit" and not trainer.interrupted and trainer.is_global_zero and os.path.isfile(self.ckpt_path):
            os.remove(self.ckpt_path)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {}
