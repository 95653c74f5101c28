"""Lightning's ``Trainer`` members that are read-only views of what the `Trainer` already holds.

`Trainer` inherits them; they read only the trainer view (docs/DESIGN.md) and the settings, so that a Lightning
script or callback that reads ``trainer.lightning_module``, ``trainer.training``, ``trainer.log_dir``,
``trainer.state`` and the like finds them. Lightning's loop objects (``fit_loop`` ...) are refused with the reason
(`dltrain._refusals`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from dltrain._refusals import refuse
from dltrain.states import RunningStage, TrainerFn, TrainerState, TrainerStatus

if TYPE_CHECKING:
    from dltrain.task import Task

__all__ = ["LightningTrainerMembers", "TrainerState"]


class LightningTrainerMembers:
    """Read-only members of Lightning's ``Trainer`` (mixed into `dltrain.Trainer`)."""

    if TYPE_CHECKING:  # what the Trainer defines
        from lightning.fabric import Fabric

        from dltrain.callbacks.base import Callback
        from dltrain.loggers.base import Logger
        from dltrain.strategies import StrategyView

        @property
        def fabric(self) -> Fabric: ...
        callbacks: list[Callback]
        loggers: list[Logger]
        default_root_dir: str
        stage: str | None
        sanity_checking: bool
        num_val_batches: list[float]
        num_training_batches: float
        num_sanity_val_steps: int
        val_dataloaders: Any
        limit_val_batches: int | float | None
        from dltrain._engine import Engine
        from dltrain._settings import Settings

        _task: Task | None
        _engine: Engine
        _settings: Settings
        _status: str
        _ckpt_path: str | None

        @property
        def strategy(self) -> StrategyView: ...
        @property
        def is_global_zero(self) -> bool: ...
        @property
        def data_parallel_rank(self) -> int: ...
        @property
        def data_parallel_size(self) -> int: ...

    # ------------------------------------------------------------------ what runs
    @property
    def lightning_module(self) -> Task | None:
        """The task being run (Lightning's name for it)."""
        return self._task

    @property
    def model(self) -> Any:
        """The task as the strategy placed it (its wrapper under DDP), or the task before it is placed."""
        module = self._engine.module
        return module if module is not None else self._task

    @property
    def state(self) -> TrainerState:
        """Which method runs, which part of it, and whether it finished (`TrainerState`)."""
        stage = self._running_stage()
        return TrainerState(fn=TrainerFn(self.stage) if self.stage is not None else None,
                            stage=RunningStage(stage) if stage is not None else None,
                            status=TrainerStatus(self._status))

    def _running_stage(self) -> str | None:
        if self._status != "running" or self.stage is None:
            return None
        if self.stage != "fit":
            return self.stage
        if self.sanity_checking:
            return "sanity_check"
        from dltrain.task import logging_into

        results = logging_into(self._task) if self._task is not None else None
        # Validation inside fit logs into a store of its own (not a training one).
        return "validate" if results is not None and not results.training else "train"

    @property
    def training(self) -> bool:
        return self._running_stage() == "train"

    @property
    def validating(self) -> bool:
        return self._running_stage() == "validate"

    @property
    def testing(self) -> bool:
        return self._running_stage() == "test"

    @property
    def predicting(self) -> bool:
        return self._running_stage() == "predict"

    @property
    def evaluating(self) -> bool:
        """Validating (also inside fit and the sanity check) or testing."""
        return self._running_stage() in ("validate", "test", "sanity_check")

    @property
    def interrupted(self) -> bool:
        """The last run stopped on an exception (Ctrl-C, a signal, an error)."""
        return self._status == "interrupted"

    @property
    def ckpt_path(self) -> str | None:
        """The checkpoint the last ``fit``/``validate``/``test``/``predict`` loaded (``None``: none)."""
        return self._ckpt_path

    @property
    def enable_validation(self) -> bool:
        """Whether this fit validates: validation loaders, a ``validation_step`` and ``limit_val_batches`` != 0."""
        from dltrain.task import Task

        task = self._task
        has_step = task is not None and type(task).validation_step is not Task.validation_step
        return self.val_dataloaders is not None and self.limit_val_batches != 0 and has_step

    @property
    def val_check_batch(self) -> float:
        """Validation runs after every this many training batches (``inf``: at the end of a loader without a length)."""
        return self._settings.val_check_batch(self.num_training_batches)

    @property
    def num_sanity_val_batches(self) -> list[float]:
        """Batches of each validation loader the sanity check runs."""
        steps = self.num_sanity_val_steps
        return [n if steps < 0 else min(float(steps), n) for n in self.num_val_batches]

    # ------------------------------------------------------------------ where it runs
    @property
    def accelerator(self) -> Any:
        """Fabric's accelerator (``CPUAccelerator``, ``CUDAAccelerator``, ``MPSAccelerator``)."""
        return self.strategy.accelerator

    @property
    def precision_plugin(self) -> Any:
        """Fabric's precision plugin of the strategy."""
        return self.strategy.precision

    @property
    def scaler(self) -> Any:
        """The gradient scaler of ``precision="16-mixed"`` (``None`` otherwise)."""
        return getattr(self.strategy.precision, "scaler", None)

    @property
    def node_rank(self) -> int:
        return self.fabric.node_rank

    @property
    def num_nodes(self) -> int:
        return int(getattr(self.strategy, "num_nodes", 1))

    @property
    def device_ids(self) -> list[int]:
        """Indices of the devices this machine's processes use."""
        devices = getattr(self.strategy, "parallel_devices", None) or [self.fabric.device]
        return [d.index or 0 for d in devices]

    @property
    def num_devices(self) -> int:
        return len(self.device_ids)

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        """``num_replicas`` and ``rank`` for a ``DistributedSampler`` (``None`` on one process)."""
        if self.data_parallel_size == 1:
            return None
        return {"num_replicas": self.data_parallel_size, "rank": self.data_parallel_rank}

    @contextlib.contextmanager
    def init_module(self, empty_init: bool | None = None) -> Generator[None, None, None]:
        """Create the task's layers on the device and in the precision of this Trainer (Fabric's ``init_module``).

        ``empty_init=True`` skips their initialisation (weights loaded next).
        """
        with self.fabric.init_module(empty_init=empty_init):
            yield

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank zero only."""
        if self.is_global_zero:
            print(*args, **kwargs)

    # ------------------------------------------------------------------ callbacks and logs
    @property
    def checkpoint_callbacks(self) -> list[Any]:
        """Every `dltrain.callbacks.Checkpoint` (``ModelCheckpoint``, ``OnExceptionCheckpoint``, ...)."""
        from dltrain.callbacks.base import Checkpoint

        return [c for c in self.callbacks if isinstance(c, Checkpoint)]

    @property
    def early_stopping_callbacks(self) -> list[Any]:
        from dltrain.callbacks.early_stopping import EarlyStopping

        return [c for c in self.callbacks if isinstance(c, EarlyStopping)]

    @property
    def early_stopping_callback(self) -> Any:
        """The first ``EarlyStopping`` (``None``: there is none)."""
        found = self.early_stopping_callbacks
        return found[0] if found else None

    @property
    def progress_bar_callback(self) -> Any:
        """The progress bar callback (``ProgressBar`` or ``RichProgressBar``; ``None``: none)."""
        from dltrain.callbacks.progress import ProgressBar
        from dltrain.callbacks.rich import RichProgressBar

        return next((c for c in self.callbacks if isinstance(c, (ProgressBar, RichProgressBar))), None)

    @property
    def received_sigterm(self) -> bool:
        """Whether the ``Preemption`` callback caught a stop signal in this run."""
        from dltrain.callbacks.preemption import Preemption

        return any(getattr(c, "received", None) is not None for c in self.callbacks if isinstance(c, Preemption))

    @property
    def log_dir(self) -> str:
        """The first logger's folder (its version folder for CSV/TensorBoard), else ``default_root_dir``."""
        for logger in self.loggers[:1]:
            folder = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
            if folder:
                return str(folder)
        return self.default_root_dir

    # ------------------------------------------------------------------ refused: Lightning's loop objects
    @property
    def fit_loop(self) -> Any:
        refuse("lightning.pytorch.Trainer.fit_loop")

    @property
    def validate_loop(self) -> Any:
        refuse("lightning.pytorch.Trainer.validate_loop")

    @property
    def test_loop(self) -> Any:
        refuse("lightning.pytorch.Trainer.test_loop")

    @property
    def predict_loop(self) -> Any:
        refuse("lightning.pytorch.Trainer.predict_loop")
