"""`Tuner`: Lightning's ``Tuner`` for a dltrain `Trainer`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.task import Task
    from dltrain.trainer import Trainer
    from dltrain.tuner.lr_finder import LRFinder

__all__ = ["Tuner"]

_METHODS = ("fit", "validate", "test", "predict")


class Tuner:
    """Search hyperparameters with a Trainer before training with it.

    Example:
        >>> trainer = dltrain.Trainer(max_epochs=1, logger=False, enable_progress_bar=False)
        >>> tuner = Tuner(trainer)
        >>> finder = tuner.lr_find(task, train_loader, num_training=20)
        >>> lr = finder.suggestion()  # finder.plot(suggest=True) draws the loss against the learning rate
        >>> trainer.fit(task, train_loader)  # trains with the learning rate found

    ``tuner.scale_batch_size(task, datamodule=dm)`` finds the largest batch size that fits (the task or the data
    module must make its loaders, again for each trial).

    Each search leaves the task's weights and the Trainer as they were (settings, callbacks, loggers, loop state,
    random number generators); only the value found changes. Under ``torchrun`` every rank gets the same answer.
    """

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    def lr_find(self, model: Task, train_dataloaders: Any = None, val_dataloaders: Any = None,
                dataloaders: Any = None, datamodule: Any = None, method: str = "fit", min_lr: float = 1e-8,
                max_lr: float = 1, num_training: int = 100, mode: str = "exponential",
                early_stop_threshold: float | None = 4.0, update_attr: bool = True,
                attr_name: str = "") -> LRFinder | None:
        """The learning-rate range test (`dltrain.tuner.lr_finder`).

        ``num_training`` optimizer steps from ``min_lr`` to ``max_lr``; returns an `LRFinder`
        (``.suggestion()``, ``.plot()``, ``.results``) and, with ``update_attr``, sets the task's
        ``lr``/``learning_rate`` (or ``attr_name``) to the suggestion.

        ``early_stop_threshold``: stop once the smoothed loss exceeds this many times the best one (``None``:
        never).
        """
        from dltrain.tuner.lr_finder import lr_find

        if method != "fit":
            raise ConfigurationError(f"lr_find(method={method!r}): the learning-rate finder trains: use 'fit'")
        _check_arguments(train_dataloaders, val_dataloaders, dataloaders, method)
        return lr_find(self._trainer, model, train_dataloaders, val_dataloaders, datamodule, min_lr=min_lr,
                       max_lr=max_lr, num_training=num_training, mode=mode,
                       early_stop_threshold=early_stop_threshold, update_attr=update_attr, attr_name=attr_name)

    def scale_batch_size(self, model: Task, train_dataloaders: Any = None, val_dataloaders: Any = None,
                         dataloaders: Any = None, datamodule: Any = None, method: str = "fit", mode: str = "power",
                         steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                         batch_arg_name: str = "batch_size", margin: float = 0.05,
                         max_val: int = 8192) -> int | None:
        """The largest batch size that runs without running out of memory (`dltrain.tuner.batch_size_scaling`).

        Sets it on the task (``batch_arg_name``) and returns it.

        The loaders must come from the task's or the datamodule's ``*_dataloader()`` (made again for each
        trial), not be passed in. ``margin`` (binsearch only) takes that fraction off the size found.
        """
        from dltrain.tuner.batch_size_scaling import scale_batch_size

        _check_arguments(train_dataloaders, val_dataloaders, dataloaders, method)
        if train_dataloaders is not None and datamodule is None and hasattr(train_dataloaders, "train_dataloader"):
            datamodule, train_dataloaders = train_dataloaders, None
        if any(x is not None for x in (train_dataloaders, val_dataloaders, dataloaders)):
            raise ConfigurationError(
                "scale_batch_size cannot change the batch size of loaders passed in: make them in the task's or a "
                "datamodule's *_dataloader() from self.batch_size (or self.hparams.batch_size), and pass "
                "datamodule=... or nothing")
        return scale_batch_size(self._trainer, model, method=method, datamodule=datamodule, mode=mode,
                                steps_per_trial=steps_per_trial, init_val=init_val, max_trials=max_trials,
                                batch_arg_name=batch_arg_name, margin=margin, max_val=max_val)


def _check_arguments(train: Any, val: Any, loaders: Any, method: str) -> None:
    if method not in _METHODS:
        raise ConfigurationError(f"method={method!r}: use one of {_METHODS}")
    if method == "fit" and loaders is not None:
        raise ConfigurationError("with method='fit' pass train_dataloaders/val_dataloaders, not dataloaders")
    if method != "fit" and (train is not None or val is not None):
        raise ConfigurationError(f"with method={method!r} pass dataloaders, not train_dataloaders/val_dataloaders")
