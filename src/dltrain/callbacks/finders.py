"""`LearningRateFinder` and `BatchSizeFinder`: Lightning's finder callbacks, run before a fit starts.

Each runs its search (``dltrain.tuner``) in ``on_before_fit``, dltrain's hook that comes first in ``fit`` and gets
``fit``'s data arguments, with short fits of its own; the fit then runs from the start with the value found, as
Lightning's callbacks do from ``on_fit_start``. Neither runs when ``fit`` resumes from a checkpoint (the resumed
run keeps the values it was started with).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from typing_extensions import override

from dltrain.callbacks.base import Callback

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task
    from dltrain.tuner.lr_finder import LRFinder

__all__ = ["BatchSizeFinder", "LearningRateFinder"]


class LearningRateFinder(Callback):
    """The learning-rate range test before training (`dltrain.tuner.Tuner.lr_find`).

    The result is ``optimal_lr`` (an `LRFinder`), and with ``update_attr`` the task's ``lr``/``learning_rate``
    is set to its suggestion before the fit trains.

    Args:
        min_lr: the first learning rate.
        max_lr: the last learning rate.
        num_training_steps: optimizer steps of the test.
        mode: ``"exponential"`` or ``"linear"``.
        early_stop_threshold: stop once the smoothed loss exceeds this many times the best (``None``: never).
        update_attr: set the task's learning rate to the suggestion.
        attr_name: the attribute to set (default ``lr`` or ``learning_rate``).

    Example:
        >>> finder = LearningRateFinder(min_lr=1e-4, max_lr=1.0, num_training_steps=20)
        >>> trainer = dltrain.Trainer(max_epochs=1, callbacks=[finder], logger=False, enable_progress_bar=False)
        >>> trainer.fit(task, train_loader)  # the range test runs first, then the fit with the suggested lr
        >>> len(finder.optimal_lr.results["lr"]) > 0  # finder.optimal_lr.plot(suggest=True) draws the test
        True
    """

    SUPPORTED_MODES = ("linear", "exponential")

    def __init__(self, min_lr: float = 1e-8, max_lr: float = 1, num_training_steps: int = 100,
                 mode: str = "exponential", early_stop_threshold: float | None = 4.0, update_attr: bool = True,
                 attr_name: str = "") -> None:
        from dltrain.errors import ConfigurationError

        if mode not in self.SUPPORTED_MODES:
            raise ConfigurationError(f"LearningRateFinder(mode={mode!r}): use one of {self.SUPPORTED_MODES}")
        self._min_lr = min_lr
        self._max_lr = max_lr
        self._num_training_steps = num_training_steps
        self._mode = mode
        self._early_stop_threshold = early_stop_threshold
        self._update_attr = update_attr
        self._attr_name = attr_name
        self.optimal_lr: LRFinder | None = None

    def lr_find(self, trainer: TrainerView, task: Task, train_dataloaders: Any = None, val_dataloaders: Any = None,
                datamodule: Any = None) -> None:
        """Run the test (called by ``on_before_fit``; override to run it at another time)."""
        from dltrain.tuner._search import as_trainer
        from dltrain.tuner.lr_finder import lr_find

        self.optimal_lr = lr_find(as_trainer(trainer, "LearningRateFinder"), task, train_dataloaders, val_dataloaders, datamodule,
                                  min_lr=self._min_lr, max_lr=self._max_lr, num_training=self._num_training_steps,
                                  mode=self._mode, early_stop_threshold=self._early_stop_threshold,
                                  update_attr=self._update_attr, attr_name=self._attr_name)

    @override
    def on_before_fit(self, trainer: TrainerView, task: Task, train_dataloaders: Any, val_dataloaders: Any,
                      datamodule: Any) -> None:
        self.lr_find(trainer, task, train_dataloaders, val_dataloaders, datamodule)


class BatchSizeFinder(Callback):
    """The batch-size search before training (`dltrain.tuner.Tuner.scale_batch_size`).

    The result is ``optimal_batch_size``, set on the task (``batch_arg_name``) before the fit trains.

    Args:
        mode: ``"power"`` or ``"binsearch"``.
        steps_per_trial: optimizer steps of each trial.
        init_val: the first batch size tried.
        max_trials: trials at most.
        batch_arg_name: the task's (or its hparams', or the datamodule's) attribute holding the batch size.
        margin: (binsearch) the fraction taken off the size found.
        max_val: the largest batch size tried.

    Example:
        The task makes its loaders from ``self.batch_size``, so that each trial can make them again:

        >>> from torch.utils.data import DataLoader
        >>> class Batched(type(task)):  # the examples' regression task
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.batch_size = 2
        ...     def train_dataloader(self):
        ...         return DataLoader(train_loader.dataset, batch_size=self.batch_size)
        ...     def val_dataloader(self):
        ...         return val_loader
        >>> finder = BatchSizeFinder(mode="power", steps_per_trial=1, max_val=32)
        >>> trainer = dltrain.Trainer(max_epochs=1, callbacks=[finder], logger=False, enable_progress_bar=False,
        ...                           enable_model_summary=False)
        >>> model = Batched()
        >>> trainer.fit(model)  # on the CPU nothing runs out of memory: the search stops at max_val
        >>> finder.optimal_batch_size, model.batch_size, trainer.num_training_batches  # 64 samples
        (32, 32, 2)
    """

    SUPPORTED_MODES = ("power", "binsearch")

    def __init__(self, mode: str = "power", steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                 batch_arg_name: str = "batch_size", margin: float = 0.05, max_val: int = 8192) -> None:
        from dltrain.errors import ConfigurationError

        if mode not in self.SUPPORTED_MODES:
            raise ConfigurationError(f"BatchSizeFinder(mode={mode!r}): use one of {self.SUPPORTED_MODES}")
        self._mode = mode
        self._steps_per_trial = steps_per_trial
        self._init_val = init_val
        self._max_trials = max_trials
        self._batch_arg_name = batch_arg_name
        self._margin = margin
        self._max_val = max_val
        self.optimal_batch_size: int | None = init_val

    def scale_batch_size(self, trainer: TrainerView, task: Task, datamodule: Any = None) -> None:
        """Run the search (called by ``on_before_fit``)."""
        from dltrain.tuner._search import as_trainer
        from dltrain.tuner.batch_size_scaling import scale_batch_size

        self.optimal_batch_size = scale_batch_size(
            as_trainer(trainer, "BatchSizeFinder"), task, method="fit", datamodule=datamodule, mode=self._mode,
            steps_per_trial=self._steps_per_trial, init_val=self._init_val, max_trials=self._max_trials,
            batch_arg_name=self._batch_arg_name, margin=self._margin, max_val=self._max_val)

    @override
    def on_before_fit(self, trainer: TrainerView, task: Task, train_dataloaders: Any, val_dataloaders: Any,
                      datamodule: Any) -> None:
        from dltrain.errors import ConfigurationError

        if datamodule is None and hasattr(train_dataloaders, "train_dataloader"):
            datamodule, train_dataloaders = train_dataloaders, None
        if train_dataloaders is not None or val_dataloaders is not None:
            raise ConfigurationError(
                "BatchSizeFinder cannot change the batch size of loaders passed to fit(): make them in the task's "
                "or a datamodule's *_dataloader() from self.batch_size, and pass datamodule=... or nothing")
        self.scale_batch_size(trainer, task, datamodule)
