"""`Trainer`: the façade over a run's parts, on Lightning Fabric.

A run has three parts, each in its own module: `dltrain._settings.Settings` (every argument, checked once, frozen),
`dltrain._engine.Engine` (Fabric and the strategy mechanics: placing the task, the step call, backward, clipping,
the optimizer step, collectives) and `dltrain._hooks.HookDispatcher` (which callbacks and task methods each hook
reaches). `dltrain._run_state.RunState` holds what the trainer view shows of the running stage. The loops
(``dltrain.loop``, ``dltrain.evaluation``) take these parts; this module builds them, runs the stages in order and
is the view callbacks read (docs/DESIGN.md, "The trainer view": `dltrain.callbacks.TrainerView`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import torch
from lightning.fabric import Fabric
from lightning.fabric.strategies import Strategy
from torch import Tensor

from dltrain import _checkpointing, _sharded
from dltrain import _config_checks as _checks
from dltrain import _data_sources as _data
from dltrain._compat import compiled_in_place
from dltrain._engine import Engine
from dltrain._fault_tolerance import check_fault_tolerant_fit, fault_tolerant_spec
from dltrain._hooks import HookDispatcher, overrides
from dltrain._hparams import hparams_for_loggers
from dltrain._optim import SchedulerConfig
from dltrain._resumable_loader import release_workers
from dltrain._run_state import LoopState, RunState
from dltrain._settings import Settings
from dltrain._step_output import add_note
from dltrain._trainer_members import LightningTrainerMembers
from dltrain.callbacks.base import Callback
from dltrain.distributed import Watchdog, destroy_process_group_at_exit, isolate_restart_round
from dltrain.errors import ConfigurationError, DltrainError
from dltrain.evaluation import evaluate, predict
from dltrain.loggers.base import Logger
from dltrain.loop import FitLoop
from dltrain.states import TrainerFn
from dltrain.strategies import FSDP2, StrategyView
from dltrain.task import Task, attach, log_into

if TYPE_CHECKING:
    from dltrain._async_checkpoint import AsyncSave

__all__ = ["Trainer", "seed_everything"]

T = TypeVar("T")

def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed Python, NumPy and torch (all devices) and the DataLoader workers; returns the seed.

    Lightning's function, with its arguments.

    Args:
        seed: the seed; ``None``: the ``PL_GLOBAL_SEED`` environment variable, else a random one (with a warning).
        workers: Lightning's switch for seeding the DataLoader workers. dltrain seeds them either way (a resumed
            run must draw what the uninterrupted one drew), so ``False`` changes nothing.
        verbose: log ``Seed set to N`` (Lightning's message).
    """
    from lightning.fabric.utilities.seed import seed_everything as _seed

    del workers  # accepted for Lightning's code; the workers are always seeded (see above)
    return _seed(seed, workers=True, verbose=verbose)


def _refuse_unknown_arguments(unknown: dict[str, Any]) -> None:
    """A TypeError for Trainer arguments that do not exist, with the closest real names."""
    import difflib
    import inspect

    from dltrain._lightning1_args import lightning1_hint

    known = [n for n in inspect.signature(Trainer.__init__).parameters if n not in ("self", "unknown")]
    hints = []
    for name in unknown:
        if (legacy := lightning1_hint(name, unknown[name])) is not None:
            hints.append(legacy)
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(f"Trainer got unknown arguments: {', '.join(hints)}. Its arguments: {', '.join(known)}")


class _Setting(Generic[T]):
    """A `Trainer` attribute that reads one field of the Trainer's frozen `Settings`.

    Assigning it replaces the settings with a checked copy (as Lightning lets ``trainer.limit_train_batches = 3``
    be set).
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, trainer: None, owner: type) -> _Setting[T]: ...
    @overload
    def __get__(self, trainer: Trainer, owner: type) -> T: ...
    def __get__(self, trainer: Trainer | None, owner: type) -> _Setting[T] | T:
        if trainer is None:
            return self
        value: T = getattr(trainer._settings, self.name)  # noqa: SLF001  the Trainer's own module
        return value

    def __set__(self, trainer: Trainer, value: T) -> None:
        settings = trainer._settings  # noqa: SLF001  the Trainer's own module
        trainer._settings = settings.replace(**{self.name: value})  # noqa: SLF001  the Trainer's own module
        # A running fit reads it from its next batch (GradientAccumulationScheduler sets accumulate_grad_batches
        # at an epoch start, as Lightning lets a callback do).
        loop = trainer._fit_loop  # noqa: SLF001  the Trainer's own module
        if loop is not None:
            loop.settings = trainer._settings  # noqa: SLF001  the Trainer's own module


class Trainer(LightningTrainerMembers):
    """Runs a :class:`~dltrain.Task`'s loops on CPU, CUDA or MPS, on one device or many (DDP/FSDP via torchrun).

    The arguments are Lightning's, in its order, then dltrain's own (``seed``, ``compile``, ``on_nonfinite_loss``).

    Args:
        accelerator: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
        strategy: ``"auto"``, ``"ddp"``, ``"fsdp2"`` (FSDP2: parameters, gradients and optimizer state sharded
            over the ranks; checkpoints are sharded directories), :class:`dltrain.FSDP2` (``"fsdp2"`` with
            options: ``FSDP2(tensor_parallel_size=2)`` adds tensor parallelism on a 2-D mesh), or a
            ``lightning.fabric`` ``Strategy`` instance — e.g. ``DDPStrategy(timeout=timedelta(minutes=5),
            find_unused_parameters=True)`` to set the collective timeout or find unused parameters,
            ``ModelParallelStrategy`` for your own parallelism.
        devices: number of devices (or ``"auto"``: under ``torchrun``, its processes per node; else 1).
        num_nodes: number of machines (``"auto"`` reads it from torchrun's environment).
        precision: ``"32-true"`` (the default), ``"16-mixed"``, ``"bf16-mixed"``, ``"bf16-true"``, ``"16-true"``
            or ``"64-true"`` (Lightning's short spellings ``32``, ``16``, ``"bf16"``, ``64`` too); not with a
            precision plugin in ``plugins``.
        logger: ``True`` (a CSVLogger), ``False``, a :class:`~dltrain.loggers.Logger` or a list of them.
        callbacks: extra :class:`~dltrain.Callback` objects.
        fast_dev_run: run this many batches (``True``: 1) of each stage once, without loggers, checkpoints or the
            model summary, to find bugs.
        max_epochs: stop after this many epochs; -1: no limit (unset: 1000, or -1 when ``max_steps``/``max_time`` is set).
        min_epochs: train at least this many epochs, even when asked to stop earlier.
        max_steps: stop after this many optimizer steps.
        min_steps: train at least this many optimizer steps.
        max_time: stop after this long (``"DD:HH:MM:SS"``, a ``timedelta`` or a dict of its arguments).
        limit_train_batches: an int (batches) or a float (fraction of the epoch).
        limit_val_batches: the same, for each validation loader.
        limit_test_batches: the same, for each test loader.
        limit_predict_batches: the same, for each prediction loader.
        overfit_batches: train and validate on this many batches (int) or this fraction (float) of each loader,
            the same ones every epoch: both limits are set to it (over ``fast_dev_run`` and ``limit_*_batches``)
            and a shuffled training or validation loader is read in order instead (with Lightning's warning). For
            debugging a model that should reach ~0 loss. ``0`` (the default): off.
        val_check_interval: validate after every n training batches (int), or every fraction of an epoch (float;
            default 1.0: at each epoch's end). As in Lightning, only batches whose count is a multiple of it are
            followed by a validation (0.5 of 5 batches: after batches 2 and 4).
        check_val_every_n_epoch: validate only in every n-th epoch (``None``: in every epoch, with an int
            ``val_check_interval`` counted over the whole fit).
        num_sanity_val_steps: validation batches run before training (default 2; ``-1``: all).
        log_every_n_steps: how often step values are read from the device and sent to the loggers.
        enable_checkpointing: add the default ``ModelCheckpoint`` (and ``Preemption``).
        enable_progress_bar: add the default progress bar.
        enable_model_summary: print the model summary when a fit starts.
        accumulate_grad_batches: batches per optimizer step.
        gradient_clip_val: clip gradients to this before each optimizer step.
        gradient_clip_algorithm: ``"norm"`` (the default) or ``"value"``.
        deterministic: use deterministic algorithms only.
        benchmark: ``torch.backends.cudnn.benchmark`` (``None``: left as it is).
        inference_mode: evaluate under ``torch.inference_mode`` (``False``: ``torch.no_grad``).
        use_distributed_sampler: split the data by data-parallel rank: map-style loaders get a distributed,
            resumable sampler, streaming loaders their split (``StreamingDataLoader.set_split``). ``False``: loaders
            are used as given (a streaming loader without a split of its own is refused under tensor parallelism).
        profiler: ``"simple"``, ``"advanced"``, ``"pytorch"`` or a profiler callback.
        detect_anomaly: run the fit under ``torch.autograd.set_detect_anomaly``.
        barebones: switch off everything that costs time per step (loggers, checkpoints, progress bar, summary).
        plugins: Lightning's plugins that make sense on Fabric (a precision plugin, a cluster environment,
            ``TorchCheckpointIO``, ``TorchSyncBatchNorm``), one or a list; others are refused with the reason
            (``dltrain._trainer_plugins``).
        sync_batchnorm: convert BatchNorm layers to SyncBatchNorm when distributed.
        reload_dataloaders_every_n_epochs: get a new training loader from the datamodule or task every n epochs.
        default_root_dir: where logs and checkpoints go (default: the working directory, as in Lightning).
        enable_autolog_hparams: send the task's ``hparams`` and the Trainer's settings to the loggers when a fit
            starts (``False``: log them yourself with ``logger.log_hyperparams``).
        seed: seed everything at construction, and seed the data order (default 0 for the data order).
        compile: ``True`` or a dict of :class:`~dltrain.callbacks.Compile` arguments (``modules``, ``backend``,
            ``mode``, ``dynamic``, ``fullgraph``, ``options``): adds that callback, which compiles the task's modules
            and reports compile time and recompilations. ``trainer.fit(torch.compile(task))`` works too.
        on_nonfinite_loss: ``"raise"`` (default: error naming the step), ``"skip"`` (skip that step; on CUDA
            this reads the loss every step) or ``"ignore"``.

    Example:
        >>> trainer = Trainer(max_epochs=3, accelerator="cpu", log_every_n_steps=10)
        >>> trainer.fit(task, train_loader, val_loader)
        >>> trainer.test(task, test_loader)  # prints the metrics, returns them: one dict per loader
        test results
          test/loss     ...
        [{'test/loss': ...}]
    """

    def __init__(
        self,
        *,
        accelerator: str = "auto",
        strategy: str | FSDP2 | Strategy = "auto",
        devices: int | str | list[int] = "auto",
        num_nodes: int | str = "auto",
        precision: str | int | None = None,
        logger: bool | Logger | Iterable[Logger] | None = None,
        callbacks: Iterable[Callback] | Callback | None = None,
        fast_dev_run: int | bool = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int | None = None,
        min_steps: int | None = None,
        max_time: str | timedelta | dict[str, int] | None = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        overfit_batches: int | float = 0.0,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        deterministic: bool = False,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        profiler: str | Callback | None = None,
        detect_anomaly: bool = False,
        barebones: bool = False,
        plugins: Any = None,
        sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        default_root_dir: str | os.PathLike[str] | None = None,
        enable_autolog_hparams: bool = True,
        seed: int | None = None,
        compile: bool | dict[str, Any] = False,
        on_nonfinite_loss: str = "raise",
        **unknown: Any,
    ) -> None:
        if unknown:
            _refuse_unknown_arguments(unknown)
        settings = Settings.resolve(
            accelerator=accelerator,
            strategy=strategy,
            devices=devices,
            num_nodes=num_nodes,
            precision=precision,
            logger=logger,
            fast_dev_run=fast_dev_run,
            max_epochs=max_epochs,
            min_epochs=min_epochs,
            max_steps=max_steps,
            min_steps=min_steps,
            max_time=max_time,
            limit_train_batches=limit_train_batches,
            limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches,
            limit_predict_batches=limit_predict_batches,
            overfit_batches=overfit_batches,
            val_check_interval=val_check_interval,
            check_val_every_n_epoch=check_val_every_n_epoch,
            num_sanity_val_steps=num_sanity_val_steps,
            log_every_n_steps=log_every_n_steps,
            enable_checkpointing=enable_checkpointing,
            enable_progress_bar=enable_progress_bar,
            enable_model_summary=enable_model_summary,
            accumulate_grad_batches=accumulate_grad_batches,
            gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm,
            deterministic=deterministic,
            benchmark=benchmark,
            inference_mode=inference_mode,
            use_distributed_sampler=use_distributed_sampler,
            profiler=profiler,
            detect_anomaly=detect_anomaly,
            barebones=barebones,
            plugins=plugins,
            sync_batchnorm=sync_batchnorm,
            reload_dataloaders_every_n_epochs=reload_dataloaders_every_n_epochs,
            default_root_dir=default_root_dir,
            enable_autolog_hparams=enable_autolog_hparams,
            seed=seed,
            compile=compile,
            on_nonfinite_loss=on_nonfinite_loss,
        )
        if seed is not None:
            seed_everything(seed, verbose=False)
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        accelerator, devices, strategy, precision = (settings.accelerator, settings.devices, settings.strategy,
                                                     settings.precision)
        # Replica groups (dltrain.FaultTolerant): each launch is one group, DDP among its own processes.
        fault_tolerant = fault_tolerant_spec(strategy)
        if fault_tolerant is not None:
            strategy = "auto"
        fabric_strategy = _sharded.resolve_strategy(strategy, accelerator, devices, settings.num_nodes, precision)
        try:
            fabric = Fabric(
                accelerator=accelerator,
                devices=devices,
                num_nodes=settings.num_nodes,
                strategy=fabric_strategy,
                # A precision plugin decides the precision itself (Fabric refuses both).
                precision=None if settings.precision_plugin else precision,  # type: ignore[arg-type]
                plugins=list(settings.plugins) or None,
            )
        except (ValueError, RuntimeError, TypeError) as err:
            raise ConfigurationError(
                f"cannot run with accelerator={accelerator!r}, devices={devices!r}, strategy={strategy!r}, "
                f"precision={precision!r}: {err}"
            ) from err
        settings.check_device(fabric.device)
        isolate_restart_round(fabric.strategy)  # before launch: see its docstring (torchrun restarts)
        fabric.launch()
        destroy_process_group_at_exit()
        if benchmark is not None:
            torch.backends.cudnn.benchmark = benchmark

        # The parts (module docstring). The fit's settings may differ in max_epochs (see fit).
        self._settings = settings
        self._engine = Engine(fabric, fault_tolerant)
        self._strategy_view = StrategyView(self)
        self._hooks = HookDispatcher(self, self._default_callbacks(
            callbacks, progress=settings.enable_progress_bar, checkpointing=settings.enable_checkpointing,
            summary=settings.enable_model_summary, profiler=profiler, max_time=max_time, compile=compile,
        ))
        self._async_checkpoints()
        self._run = RunState(self._make_loggers(settings.logger), self._engine.is_global_zero)
        self._task: Task | None = None  # the task of the running (or last) stage
        self._configured_task: Task | None = None  # configure_callbacks/configure_model ran for this task
        self._fit_loop: FitLoop | None = None
        self._watchdog: Watchdog | None = None
        self._status = "initializing"  # trainer.state.status: running, finished, interrupted
        self._ckpt_path: str | None = None  # the checkpoint the last stage loaded (trainer.ckpt_path)

    # ================================================================== the trainer view
    # What callbacks and tasks read (docs/DESIGN.md; typed as dltrain.callbacks.TrainerView). Loop progress is
    # `loop_state`; the settings are read-only.
    @property
    def loop_state(self) -> LoopState:
        """Where ``fit`` is (epoch, global step, batches done, phase): what a checkpoint saves of the loop."""
        return self._run.loop_state

    @property
    def global_step(self) -> int:
        """Optimizer steps taken."""
        return self._run.loop_state.global_step

    @property
    def current_epoch(self) -> int:
        """The training epoch being run, from 0 (after a fit: the number of epochs trained)."""
        return self._run.loop_state.epoch + self._run.stopped_in_epoch

    @property
    def should_stop(self) -> bool:
        """Set it to stop training at the end of this batch (ORed over ranks at the end of the epoch)."""
        return self._run.loop_state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self._run.loop_state.should_stop = bool(value)

    @property
    def is_last_batch(self) -> bool:
        """Whether the training batch being run is the last of its epoch."""
        return self._run.is_last_batch

    @property
    def stage(self) -> str | None:
        """The running (or last) stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"``; else ``None``."""
        return self._run.stage

    @stage.setter
    def stage(self, value: str | None) -> None:
        self._run.stage = value

    @property
    def datamodule(self) -> Any:
        """The datamodule of the stage, if it has one."""
        return self._run.datamodule

    @datamodule.setter
    def datamodule(self, value: Any) -> None:
        self._run.datamodule = value

    @property
    def sanity_checking(self) -> bool:
        """Whether the validation running is the sanity check before training."""
        return self._run.sanity_checking

    @sanity_checking.setter
    def sanity_checking(self, value: bool) -> None:
        self._run.sanity_checking = value

    @property
    def num_training_batches(self) -> float:
        """Training batches per epoch, after ``limit_train_batches`` (``inf``: a loader without a length)."""
        return self._run.num_training_batches

    @num_training_batches.setter
    def num_training_batches(self, value: float) -> None:
        self._run.num_training_batches = value

    @property
    def num_val_batches(self) -> list[float]:
        """Batches of each validation loader (after ``limit_val_batches``)."""
        return self._run.num_val_batches

    @num_val_batches.setter
    def num_val_batches(self, value: list[float]) -> None:
        self._run.num_val_batches = value

    @property
    def num_test_batches(self) -> list[float]:
        """Batches of each test loader (after ``limit_test_batches``)."""
        return self._run.num_test_batches

    @num_test_batches.setter
    def num_test_batches(self, value: list[float]) -> None:
        self._run.num_test_batches = value

    @property
    def num_predict_batches(self) -> list[float]:
        """Batches of each prediction loader (after ``limit_predict_batches``)."""
        return self._run.num_predict_batches

    @num_predict_batches.setter
    def num_predict_batches(self, value: list[float]) -> None:
        self._run.num_predict_batches = value

    @property
    def train_dataloader(self) -> Any:
        """The training loader of the fit, as the Trainer wrapped it."""
        return self._run.train_dataloader

    @train_dataloader.setter
    def train_dataloader(self, value: Any) -> None:
        self._run.train_dataloader = value

    @property
    def val_dataloaders(self) -> Any:
        """The validation loader, or the list of them when there are several."""
        return self._run.val_dataloaders

    @val_dataloaders.setter
    def val_dataloaders(self, value: Any) -> None:
        self._run.val_dataloaders = value

    @property
    def test_dataloaders(self) -> Any:
        """The test loader, or the list of them when there are several."""
        return self._run.test_dataloaders

    @test_dataloaders.setter
    def test_dataloaders(self, value: Any) -> None:
        self._run.test_dataloaders = value

    @property
    def predict_dataloaders(self) -> Any:
        """The prediction loader, or the list of them when there are several."""
        return self._run.predict_dataloaders

    @predict_dataloaders.setter
    def predict_dataloaders(self, value: Any) -> None:
        self._run.predict_dataloaders = value

    @property
    def loggers(self) -> list[Logger]:
        """The run's loggers."""
        return self._run.loggers

    @loggers.setter
    def loggers(self, value: list[Logger]) -> None:
        self._run.loggers = value

    @property
    def logged_metrics(self) -> dict[str, float]:
        """The newest value of each metric of this stage for the loggers, as numbers.

        What the loggers got, and the step values logged since the last logging step (as Lightning's).
        """
        return self._run.logged_metrics_now()

    @logged_metrics.setter
    def logged_metrics(self, value: dict[str, float]) -> None:
        self._run.logged_metrics = value

    @property
    def callback_metrics(self) -> dict[str, Tensor]:
        """The newest value of every logged metric, as tensors.

        Epoch aggregates and logging-step values as published, and the latest step values logged since (read on
        demand: logging costs nothing more per step).
        """
        return self._run.callback_metrics()

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """The ``prog_bar`` values as numbers: as published, and the newest step values logged since.

        Reading it copies those from the device (one transfer): the progress bar reads it only when it redraws.
        """
        return self._run.progress_bar_metrics()

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers ``configure_optimizers`` returned (placed by the strategy)."""
        return self._engine.optimizers

    @optimizers.setter
    def optimizers(self, value: list[torch.optim.Optimizer]) -> None:
        self._engine.optimizers = list(value)

    @property
    def lr_scheduler_configs(self) -> list[SchedulerConfig]:
        """The LR schedulers ``configure_optimizers`` returned, with their interval and frequency."""
        return self._engine.lr_scheduler_configs

    @lr_scheduler_configs.setter
    def lr_scheduler_configs(self, value: list[SchedulerConfig]) -> None:
        self._engine.lr_scheduler_configs = list(value)

    @property
    def fabric(self) -> Fabric:
        """The ``lightning.fabric.Fabric`` the Trainer runs on."""
        return self._engine.fabric

    @property
    def global_rank(self) -> int:
        """This process's rank among all processes."""
        return self._engine.global_rank

    @property
    def local_rank(self) -> int:
        """This process's rank on its machine."""
        return self._engine.local_rank

    @property
    def world_size(self) -> int:
        """The number of processes of the run."""
        return self._engine.world_size

    @property
    def is_global_zero(self) -> bool:
        """Whether this process is global rank zero (the one that prints and writes shared files)."""
        return self._engine.is_global_zero

    @property
    def data_parallel_rank(self) -> int:
        """This rank's index among the data-parallel replicas (what training data it reads).

        ``global_rank`` without tensor parallelism. Tensor-parallel peers share it. With replica groups
        (`dltrain.FaultTolerant`) it counts over every group's ranks: ``replica_group * group size + rank in the
        group``.
        """
        return self._engine.train_layout.rank

    @property
    def data_parallel_size(self) -> int:
        """How many replicas read different training data.

        That is ``world_size // tensor_parallel_size``; with replica groups, over all groups.
        """
        return self._engine.train_layout.size

    @property
    def fault_tolerance(self) -> Any:
        """With ``strategy=dltrain.FaultTolerant(...)`` during fit: this group's replica state; else ``None``.

        The state has ``group``, ``groups``, ``replicas`` in the last quorum, ``quorum_changes``, ``healed`` (this
        launch received its state from a live group) and ``joined_at_ns``.
        """
        return self._engine.replicas

    @property
    def data_parallel_group(self) -> Any:
        """The process group of the data-parallel replicas, to reduce metrics over (``None``: every rank)."""
        return self._engine.layout.group

    @property
    def tensor_parallel_rank(self) -> int:
        """This rank's index in its tensor-parallel group (0 without tensor parallelism)."""
        return self._engine.layout.tensor_parallel_rank

    @property
    def device(self) -> torch.device:
        """The device this process trains on."""
        return self._engine.device

    @property
    def strategy(self) -> StrategyView:
        """The strategy that runs the model (DDP, FSDP2, single device, ...) under Fabric's and Lightning's names.

        Lightning Fabric's strategy object itself is ``trainer.strategy.fabric_strategy``; see
        :class:`~dltrain.strategies.StrategyView`.
        """
        return self._strategy_view

    @property
    def callbacks(self) -> list[Callback]:
        """The run's callbacks, in the order their hooks run (checkpoint callbacks last)."""
        return self._hooks.callbacks

    @callbacks.setter
    def callbacks(self, callbacks: list[Callback]) -> None:
        self._hooks.callbacks = callbacks

    @property
    def logger(self) -> Logger | None:
        """The first logger, or ``None``."""
        return self.loggers[0] if self.loggers else None

    @property
    def checkpoint_callback(self) -> Any:
        """The first ``ModelCheckpoint``, or ``None``."""
        from dltrain.callbacks.checkpoint import ModelCheckpoint

        return next((c for c in self.callbacks if isinstance(c, ModelCheckpoint)), None)

    @property
    def profiler(self) -> Any:
        """The profiler callback (``Trainer(profiler=...)``), or one that measures nothing.

        ``with trainer.profiler.profile("name"):`` works either way.
        """
        from dltrain.callbacks.profiler import PassThroughProfiler, Profiler

        found = next((c for c in self.callbacks if isinstance(c, Profiler)), None)
        return found if found is not None else PassThroughProfiler()

    @property
    def estimated_stepping_batches(self) -> float:
        """Optimizer steps the whole fit will take (for schedulers such as OneCycleLR)."""
        if self.max_epochs == -1:  # no epoch limit: max_steps, if any, is the answer (as in Lightning)
            return float("inf") if self.max_steps == -1 else self.max_steps
        n = self.num_training_batches
        total = math.ceil(n / self.accumulate_grad_batches) * (self.max_epochs or 1000) if math.isfinite(n) else n
        return min(total, self.max_steps) if self.max_steps > 0 else total

    # The settings (read-only to callbacks but for accumulate_grad_batches; assigning one replaces the frozen
    # Settings, checked again; a running fit reads it from its next batch, a stage not yet started from its start).
    max_epochs: _Setting[int | None] = _Setting()
    min_epochs: _Setting[int] = _Setting()
    max_steps: _Setting[int] = _Setting()
    min_steps: _Setting[int] = _Setting()
    max_time: _Setting[str | timedelta | dict[str, int] | None] = _Setting()
    limit_train_batches: _Setting[int | float | None] = _Setting()
    limit_val_batches: _Setting[int | float | None] = _Setting()
    limit_test_batches: _Setting[int | float | None] = _Setting()
    limit_predict_batches: _Setting[int | float | None] = _Setting()
    fast_dev_run: _Setting[int] = _Setting()
    overfit_batches: _Setting[int | float] = _Setting()
    enable_autolog_hparams: _Setting[bool] = _Setting()
    num_sanity_val_steps: _Setting[int] = _Setting()
    detect_anomaly: _Setting[bool] = _Setting()
    inference_mode: _Setting[bool] = _Setting()
    use_distributed_sampler: _Setting[bool] = _Setting()
    reload_dataloaders_every_n_epochs: _Setting[int] = _Setting()
    val_check_interval: _Setting[int | float | None] = _Setting()
    check_val_every_n_epoch: _Setting[int | None] = _Setting()
    accumulate_grad_batches: _Setting[int] = _Setting()
    gradient_clip_val: _Setting[float | None] = _Setting()
    gradient_clip_algorithm: _Setting[str] = _Setting()
    log_every_n_steps: _Setting[int] = _Setting()
    default_root_dir: _Setting[str] = _Setting()
    seed: _Setting[int] = _Setting()
    compile: _Setting[bool | dict[str, Any]] = _Setting()
    sync_batchnorm: _Setting[bool] = _Setting()
    on_nonfinite_loss: _Setting[str] = _Setting()
    precision: _Setting[str] = _Setting()
    barebones: _Setting[bool] = _Setting()

    # ================================================================== set-up helpers
    def _default_callbacks(self, callbacks: Any, *, progress: bool, checkpointing: bool, summary: bool,
                           profiler: Any, max_time: Any, compile: bool | dict[str, Any]) -> list[Callback]:
        """The user's callbacks plus the ones the Trainer's switches ask for. Features are callbacks."""
        from dltrain.callbacks import Compile, ModelCheckpoint, ModelSummary, Preemption, ProgressBar, Timer
        from dltrain.callbacks.profiler import make_profiler
        from dltrain.callbacks.rich import RichProgressBar

        if callbacks is None:
            result: list[Callback] = []
        elif isinstance(callbacks, Callback):
            result = [callbacks]
        else:
            result = list(callbacks)
        for cb in result:
            if not isinstance(cb, Callback):
                raise ConfigurationError(_not_a_callback(cb))
        if progress and not any(isinstance(c, (ProgressBar, RichProgressBar)) for c in result):
            result.append(ProgressBar())
        if summary and not any(isinstance(c, ModelSummary) for c in result):
            result.append(ModelSummary())
        if profiler is not None:
            result.append(make_profiler(profiler))
        if max_time is not None:
            result.append(Timer(max_time))
        if compile is not False and not any(isinstance(c, Compile) for c in result):
            try:
                result.append(Compile(**(compile if isinstance(compile, dict) else {})))
            except TypeError as err:
                raise ConfigurationError(f"Trainer(compile={compile!r}): {err}; use True or a dict of "
                                         "dltrain.callbacks.Compile's arguments") from err
        if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in result):
            result.append(ModelCheckpoint())
        if checkpointing and not any(isinstance(c, Preemption) for c in result):
            result.append(Preemption())  # a SIGTERM or Ctrl-C becomes a checkpoint, not lost work
        if not checkpointing and any(isinstance(c, ModelCheckpoint) for c in result):
            raise ConfigurationError("enable_checkpointing=False but a ModelCheckpoint is in callbacks; drop one")
        return _checkpoints_last(result)

    def _make_loggers(self, logger: Any) -> list[Logger]:
        if logger is True:
            from dltrain.loggers.csv import CSVLogger

            return [CSVLogger(self.default_root_dir)]
        if logger is False or logger is None:
            return []
        loggers = [logger] if isinstance(logger, Logger) else list(logger)
        for lg in loggers:
            if not isinstance(lg, Logger):
                raise ConfigurationError(f"logger must be a dltrain Logger (or True/False), got {type(lg).__name__}")
        return loggers

    def _attach(self, task: Task, stage: str, datamodule: Any = None) -> None:
        if not isinstance(task, Task):
            raise ConfigurationError(_not_a_task(task))
        self._task = task
        self._hooks.task = task
        attach(task, self, self._engine, self._hooks)
        self._run.stage = stage
        self._run.datamodule = datamodule
        self._run.reset_metrics()  # as Lightning: each stage's callback/logged/progress-bar metrics start empty
        self._status = "running"

    def _configure_task(self, task: Task) -> None:
        """The task's own callbacks (``configure_callbacks``) and layers (``configure_model``), once per task."""
        if self._configured_task is task:
            return
        self._configured_task = task
        extra = task.configure_callbacks()
        extra = [extra] if isinstance(extra, Callback) else list(extra or [])
        for cb in extra:
            if not isinstance(cb, Callback):
                raise ConfigurationError(_not_a_callback(cb))
        # As in Lightning: the task's callbacks replace the Trainer's callbacks of the same types.
        types = {type(cb) for cb in extra}
        self.callbacks = _checkpoints_last([c for c in self.callbacks if type(c) not in types] + extra)
        self._async_checkpoints()
        task.configure_model()

    def _async_checkpoints(self) -> None:
        """Lightning's ``plugins=[AsyncCheckpointIO()]``: every ModelCheckpoint saves in the background."""
        if self._settings.async_checkpoints:
            from dltrain.callbacks.checkpoint import ModelCheckpoint

            for cb in self.callbacks:
                if isinstance(cb, ModelCheckpoint):
                    cb.async_save = True

    def _place(self, task: Task, with_optimizer: bool) -> None:
        """Place the task (and its optimizers) with Fabric: `Engine.place`."""
        self._engine.place(task, with_optimizer=with_optimizer, sync_batchnorm=self.sync_batchnorm,
                           on_nonfinite_loss=self.on_nonfinite_loss, hooks=self._hooks, progress=self.loop_state)

    # ================================================================== fit
    def fit(
        self,
        model: Task,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Any = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        weights_only: bool | None = None,
    ) -> None:
        """Train ``model`` (a `Task`); resume from ``ckpt_path`` when given.

        ``ckpt_path``: a file, ``"last"`` (the newest complete checkpoint) or ``"best"``.

        ``weights_only`` (Lightning's, on fit/validate/test/predict): how ``ckpt_path`` is unpickled. ``None``
        or ``True``: ``torch.load(weights_only=True)``, tensors and plain types only (what dltrain writes; safe
        for untrusted files). ``False``: any pickled object, for a trusted checkpoint that holds others (a
        Lightning checkpoint with custom objects in its hyperparameters); never for a file you do not trust.

        Data comes from ``train_dataloaders``/``val_dataloaders`` (a loader, or a list of validation loaders), or a
        ``datamodule`` (also accepted in place of ``train_dataloaders``), or the task's own ``train_dataloader()``
        and ``val_dataloader()``.

        Hook order (Lightning's: callbacks, then the task; the loops are in ``dltrain.loop``)::

            on_before_fit                                callbacks (dltrain's hook: the finders search here;
                                                         not when resuming)
            prepare_data                                 datamodule, task (local rank 0 of each machine)
            setup("fit")                                 datamodule, callbacks, task
            configure_callbacks, configure_model         task
            train_dataloader, val_dataloader             datamodule or task
            configure_optimizers                         task
            on_load_checkpoint                           task, callbacks (when resuming)
            on_fit_start                                 callbacks, task
            on_sanity_check_start, validation of num_sanity_val_steps batches, on_sanity_check_end
            on_train_start                               callbacks, task
            for each epoch:
                on_train_epoch_start                     callbacks, task
                for each batch:
                    on_before_batch_transfer, transfer_batch_to_device, on_after_batch_transfer    task
                    on_train_batch_start                 callbacks, task (the task's -1 ends the epoch)
                    training_step                        task
                    at the first batch of an accumulation window:
                        on_before_zero_grad              callbacks, task
                        optimizer_zero_grad              task
                    on_before_backward, backward, on_after_backward      callbacks, task
                    every accumulate_grad_batches batches, and at the epoch's last batch:
                        on_before_optimizer_step         callbacks, task
                        configure_gradient_clipping      task (gradient_clip_val)
                        optimizer_step                   task
                        step-interval LR schedulers      (lr_scheduler_step)
                    on_train_batch_end                   callbacks, task
                    step values to the loggers           every log_every_n_steps optimizer steps
                    validation when due (Lightning's rule, below), except after the epoch's last batch
                validation if due after the last batch: in the epochs check_val_every_n_epoch names, after every
                val_check_interval batches (counted over the fit with check_val_every_n_epoch=None), and
                when should_stop ends training early:
                    on_validation_model_zero_grad        task (only when overridden)
                    on_validation_model_eval             task
                    on_validation_start                  callbacks, task
                    on_validation_epoch_start            callbacks, task
                    for each batch: on_validation_batch_start, validation_step, on_validation_batch_end
                    on_validation_epoch_end              task; epoch metrics reduced; callbacks; loggers
                    on_validation_end                    callbacks, task
                    on_validation_model_train            task
                on_train_epoch_end                       task; epoch metrics reduced; callbacks (ModelCheckpoint
                                                         last); loggers
                should_stop agreed over ranks; epoch-interval LR schedulers
            on_train_end                                 callbacks, task
            on_fit_end                                   callbacks, task
            teardown("fit")                              datamodule, callbacks, task (also after an exception,
                                                         after on_exception)

        With ``automatic_optimization = False`` the batch runs ``training_step`` only: the task calls
        ``manual_backward`` (with the backward hooks) and steps its optimizers (``on_before_optimizer_step``).
        Validation runs in ``eval()`` mode without gradients and leaves the training RNG stream as it found it.
        Returning ``None`` from ``training_step`` skips that batch: no backward from it (under DDP the rank joins
        the gradient all-reduce with zeros, so the other ranks do not wait for it).
        """
        task = compiled_in_place(model)  # torch.compile(task): the task, compiled in place with those settings
        if datamodule is None and _data.is_datamodule(train_dataloaders):
            datamodule, train_dataloaders = train_dataloaders, None
        self._attach(task, "fit", datamodule)
        self._run.stopped_in_epoch = False  # a new fit: the loop state decides current_epoch again
        if ckpt_path is None:  # dltrain's hook before set-up: the finders run their searches (fits of their own)
            self._hooks.call_callbacks("on_before_fit", train_dataloaders, val_dataloaders, datamodule)
            self._attach(task, "fit", datamodule)
        self._watchdog = None
        loop: FitLoop | None = None
        try:
            self._prepare_and_setup("fit")
            self._configure_task(task)
            _checks.check_removed_hooks(task, "fit")
            _checks.check_manual_optimization(self, task)
            if self._engine.fault_tolerant is not None:
                check_fault_tolerant_fit(task, self.accumulate_grad_batches, self.callbacks)
            train_source = self._fit_source("train", train_dataloaders)
            _checks.check_loader(self, train_source, "train")
            val_source = self._source("val", val_dataloaders, required=False)
            if not _checks.validation_runs(self, task, val_source is not None):
                val_source = None
            if val_source is not None:
                val_source = self._fit_source("val", val_source)
                _checks.check_loader(self, val_source, "val")
            train_loader = self._wrap(train_source, training=True)
            val_loaders = None if val_source is None else self._wrap_all(val_source)
            self.train_dataloader = train_loader
            self.val_dataloaders = val_loaders if val_loaders is None or len(val_loaders) > 1 else val_loaders[0]
            self.num_training_batches = self._settings.count_batches(train_loader, self.limit_train_batches)
            self._check_fit_inputs(task, val_loaders)
            # After the loaders: configure_optimizers may read trainer.estimated_stepping_batches.
            self._place(task, with_optimizer=True)
            if self.max_epochs is None:
                max_epochs = _checks.default_max_epochs(self, self.max_time is not None or self.max_steps != -1)
                self._settings = self._settings.replace(max_epochs=max_epochs)
            loop = FitLoop(self._settings, self._engine, self._hooks, self._run, task, train_loader, val_loaders,
                           reload_loader=self._reload_train_loader)
            self._fit_loop = loop
            self._run.training_values = loop.results
            restored = None
            if ckpt_path is not None:
                restored = _checkpointing.restore(self, self._engine, self._hooks, self._run, loop, ckpt_path,
                                                  weights_only=weights_only)
            self._ckpt_path = restored["_path"] if restored is not None else None
            if self._engine.fault_tolerant is not None:
                # Join the other replica groups; a group that is behind (restarted) resumes from their state.
                received = self._engine.start_replicas(
                    lambda: _checkpointing.replica_state(self._engine, self._hooks, self._run, loop),
                    lambda state: _checkpointing.load_replica_state_in_loop(self._engine, self._run, state),
                    step=self.global_step)
                if received is not None:
                    restored = _checkpointing.restore_from(self, self._engine, self._hooks, self._run, loop,
                                                           received, None)
                    loop.replica_position = received["ranks"][self.global_rank].get("train_loader")
            if restored is not None and self.is_global_zero:
                sys.stderr.write(f"[dltrain] restored from {restored['_path']} at {loop.position()}\n")
                if loop.finished():
                    sys.stderr.write(f"[dltrain] that run is already complete ({loop.finished_reason()}\n")
            self._watchdog = Watchdog(self.global_rank, self.world_size,
                                      lambda: (self.current_epoch, loop.batch_idx, loop.in_batches))
            loop.watchdog = self._watchdog
            hparams = hparams_for_loggers(task, self._run.datamodule) if self.enable_autolog_hparams else None
            if self.is_global_zero and hparams is not None:
                for lg in self.loggers:
                    lg.log_hyperparams(hparams)
            self._watchdog.start()
            self._hooks.call("on_fit_start")
            if restored is not None:  # after on_fit_start, as in Lightning (BaseFinetuning rebuilds groups there)
                _checkpointing.restore_training_state(self._engine, restored)
            with torch.autograd.set_detect_anomaly(self.detect_anomaly):
                loop.run()
            self._hooks.call("on_fit_end")
            if self.is_global_zero:
                for lg in self.loggers:
                    lg.finalize("success")
        except BaseException as exc:
            self._handle_exception(exc)
            raise
        finally:
            if self._watchdog is not None:
                self._watchdog.stop()
            if loop is not None:
                loop.in_batches = False
                release_workers([loop.loader, *(loop.val_loaders or [])])
            self._engine.stop_replicas()
            self._teardown("fit")

    # Where a stage's data comes from (dltrain._data_sources), with this run's settings and split.
    def _source(self, kind: str, given: Any, required: bool = True) -> Any:
        return _data.source(kind, given, self.datamodule, self._task, required=required)

    def _fit_source(self, kind: str, given: Any) -> Any:
        """A fit's training or validation data; with ``overfit_batches``, shuffled loaders read in order."""
        loaders = self._source(kind, given)
        if self.overfit_batches:
            loaders = _data.in_order_to_overfit(loaders, kind, self)
        return loaders

    def _wrap(self, loader: Any, training: bool) -> Any:
        # Training data is split over every replica group's ranks; evaluation inside each group.
        layout = self._engine.train_layout if training else self._engine.layout
        return _data.wrap(loader, training, self._settings, layout)

    def _wrap_all(self, loaders: Any) -> list[Any]:
        return _data.wrap_all(loaders, self._settings, self._engine.layout)

    def _reload_train_loader(self) -> Any:
        """``reload_dataloaders_every_n_epochs``: a new training loader from the datamodule or task."""
        loader = self._wrap(self._fit_source("train", None), training=True)
        self.train_dataloader = loader
        return loader

    def _prepare_and_setup(self, stage: str) -> None:
        _data.prepare_and_setup(self, self._engine, self._hooks, self.datamodule, self._task, stage)

    def _check_fit_inputs(self, task: Task, val_loaders: list[Any] | None) -> None:
        """Mistakes that would otherwise show only after an epoch, or never."""
        n = self.num_training_batches
        if self.loggers and math.isfinite(n) and 0 < n < self.log_every_n_steps and self.is_global_zero:
            warnings.warn(
                f"{int(n)} training batches per epoch and log_every_n_steps={self.log_every_n_steps}: step values "
                f"reach the loggers only every {self.log_every_n_steps} optimizer steps. Set "
                f"Trainer(log_every_n_steps=...) to {int(n)} or less to see them every epoch",
                UserWarning, stacklevel=3,
            )

    def _handle_exception(self, exc: BaseException) -> None:
        where = f"rank {self.global_rank}, global step {self.global_step}, epoch {self.current_epoch}"
        loop = self._fit_loop
        if loop is not None and loop.in_batches:
            where += f", batch {loop.batch_idx}"
        if isinstance(exc, Exception):
            add_note(exc, f"[dltrain] raised on {where}")
            from dltrain.tuner.batch_size_scaling import is_oom_error

            # A batch-size trial (dltrain.tuner) expects out-of-memory errors: every rank meets them at the same
            # step and the tuner agrees on them; telling the watchdog would stop the other ranks.
            if self.world_size > 1 and not (self._run.oom_expected and is_oom_error(exc)):
                sys.stderr.write(f"[dltrain] {where} failed: {type(exc).__name__}: {exc}\n")
                if self._watchdog is not None:
                    self._watchdog.report_error(self.global_step, exc)
        status = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
        self._status = "interrupted"
        for cb in self.callbacks:
            if overrides(cb, Callback, "on_exception"):
                with contextlib.suppress(Exception):
                    cb.on_exception(self, self._task, exc)  # type: ignore[arg-type]
        datamodule = self._run.datamodule
        if datamodule is not None and callable(getattr(datamodule, "on_exception", None)):
            with contextlib.suppress(Exception):
                datamodule.on_exception(exc)
        if self.is_global_zero:
            for lg in self.loggers:
                with contextlib.suppress(Exception):
                    lg.finalize(status)

    def _teardown(self, stage: str) -> None:
        """``teardown(stage)``: datamodule, callbacks, task (Lightning's order); ``stage`` as a `TrainerFn`."""
        stage = TrainerFn(stage)
        if self._status == "running":
            self._status = "finished"
        if self.datamodule is not None:
            self.datamodule.teardown(stage)
        self._hooks.call_callbacks("teardown", stage)
        if self._task is not None:
            self._task.teardown(stage)
            log_into(self._task, None)

    # ================================================================== evaluation and prediction
    def validate(self, model: Task | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
                 verbose: bool = True, datamodule: Any = None,
                 weights_only: bool | None = None) -> list[dict[str, float]]:
        """Run the validation loop once; one dict of epoch metrics (reduced over all ranks) per loader.

        ``weights_only``: see `fit`.
        """
        return self._run_stage("validate", model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def test(self, model: Task | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
             verbose: bool = True, datamodule: Any = None, weights_only: bool | None = None) -> list[dict[str, float]]:
        """Run the test loop once; one dict of epoch metrics (reduced over all ranks) per loader.

        ``weights_only``: see `fit`.
        """
        return self._run_stage("test", model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def predict(self, model: Task | None = None, dataloaders: Any = None, datamodule: Any = None,
                return_predictions: bool | None = None, ckpt_path: str | None = None,
                weights_only: bool | None = None) -> Any:
        """Run ``predict_step`` on every batch; this rank's outputs, one per batch in order.

        ``None`` for a batch the loader skipped whole; with several loaders, one list per loader.
        ``weights_only``: see `fit`.
        """
        outputs = self._run_stage("predict", model, dataloaders, ckpt_path, False, datamodule, weights_only)
        return None if return_predictions is False else outputs

    def _run_stage(self, stage: str, model: Task | None, dataloaders: Any, ckpt_path: str | None, verbose: bool,
                   datamodule: Any, weights_only: bool | None = None) -> Any:
        task = compiled_in_place(model) if model is not None else self._task
        if task is None:
            raise ConfigurationError(f"trainer.{stage}() needs a task: pass model=... (or call fit first)")
        if model is None and ckpt_path is None:
            ckpt_path = self._best_for_unnamed_model(stage)
        if datamodule is None and _data.is_datamodule(dataloaders):
            datamodule, dataloaders = dataloaders, None
        self._attach(task, stage, datamodule if datamodule is not None else self.datamodule)
        loaders: list[Any] = []
        try:
            self._prepare_and_setup(stage)
            self._configure_task(task)
            kind = {"validate": "val", "test": "test", "predict": "predict"}[stage]
            _checks.check_removed_hooks(task, stage)
            given = self._source(kind, dataloaders)
            _checks.check_loader(self, given, kind)
            loaders = self._wrap_all(given)
            self._place(task, with_optimizer=False)
            self._ckpt_path = None
            if ckpt_path is not None:
                self._ckpt_path = str(_checkpointing.load_weights(self, self._engine, ckpt_path,
                                                                  weights_only=weights_only,
                                                                  datamodule=self._run.datamodule))
            parts = (self._settings, self._engine, self._hooks, self._run)
            current = loaders[0] if len(loaders) == 1 else loaders
            if stage == "predict":
                self.predict_dataloaders = current
                return predict(*parts, task, loaders, self.limit_predict_batches)
            if stage == "test":
                self.test_dataloaders = current
            self._fit_loop = None  # callback_metrics no longer read a fit's loop
            self._run.training_values = None
            # is_last_batch stays the fit's, as in Lightning (it belongs to the fit loop's batch progress).
            limit = self.limit_val_batches if stage == "validate" else self.limit_test_batches
            results = evaluate(*parts, task, loaders, "validation" if stage == "validate" else "test", limit)
            if verbose and self.is_global_zero:
                _print_results(stage, results)
            return results
        except BaseException as exc:
            self._handle_exception(exc)
            raise
        finally:
            release_workers(loaders)
            self._teardown(stage)

    def _best_for_unnamed_model(self, stage: str) -> str:
        """``"best"``, with a warning: Lightning's rule for ``validate/test/predict()`` without a model or ckpt_path.

        The best checkpoint of the Trainer's ModelCheckpoint (an error without one).
        """
        from dltrain.callbacks.checkpoint import ModelCheckpoint

        if not isinstance(self.checkpoint_callback, ModelCheckpoint):
            raise ConfigurationError(
                f'trainer.{stage}() was called without a model, which means ckpt_path="best" (as in Lightning), but '
                "this Trainer has no ModelCheckpoint to name one: pass the model (trainer."
                f"{stage}(task, ...)) to use its current weights, or a checkpoint path as ckpt_path"
            )
        if self.is_global_zero:
            warnings.warn(
                f"{stage}() was called without a model: the best checkpoint of the Trainer's ModelCheckpoint is loaded "
                f"(ckpt_path=\"best\", as Lightning does). Pass ckpt_path=\"best\" or \"last\" to say which, or the "
                "model to use its current weights; either silences this warning",
                UserWarning, stacklevel=4,
            )
        return "best"

    # ================================================================== checkpoints
    def save_checkpoint(self, filepath: str | os.PathLike[str], weights_only: bool = False,
                        storage_options: dict[str, Any] | None = None, *, background: AsyncSave | None = None,
                        after: Callable[[], None] | None = None) -> None:
        """Write a checkpoint of everything needed to resume exactly (every rank must call it).

        Taken between optimizer steps of an accumulation window, the partial gradients are not saved.

        Args:
            filepath: a file, or a URL of an object store (``s3://bucket/run/model.ckpt``).
            weights_only: the weights, hparams and loop counters only (for evaluation and ``load_from_checkpoint``).
            storage_options: fsspec options for a URL (Lightning's ``CheckpointIO`` argument); never saved.
            background: write it on this writer thread (`ModelCheckpoint(async_save=True)`): the state is copied off
                the device first, and this returns before it is written.
            after: called on global rank zero once the checkpoint is complete (on the writer thread with
                ``background``).
        """
        from dltrain import _storage

        if storage_options is not None and not _storage.is_remote(filepath):
            # Lightning refuses them for a local file too (TorchCheckpointIO takes none).
            raise ConfigurationError(f"save_checkpoint(storage_options=...): {str(filepath)!r} is a local path; "
                                     "storage_options are for object-store URLs (s3://..., gs://...)")
        if self._task is None:
            raise DltrainError("save_checkpoint() needs a task: call it during or after fit/validate/test")
        _checkpointing.save(self._engine, self._hooks, self._run, self._task, self._fit_loop, filepath,
                            storage_options, weights_only=weights_only, background=background, after=after)


def _checkpoints_last(callbacks: list[Callback]) -> list[Callback]:
    """``callbacks`` with the checkpoint callbacks last, so that their hooks run after the others' (as Lightning).

    An epoch-end checkpoint then holds what every other callback decided at that epoch end (EarlyStopping's
    should_stop, its wait count).
    """
    from dltrain.callbacks.base import Checkpoint

    return [c for c in callbacks if not isinstance(c, Checkpoint)] + [c for c in callbacks if isinstance(c, Checkpoint)]


def _not_a_callback(obj: Any) -> str:
    if type(obj).__module__.startswith(("lightning.pytorch", "pytorch_lightning")):
        return (f"{type(obj).__name__} is a Lightning callback: use dltrain's (dltrain.callbacks.{type(obj).__name__} "
                "where it exists), or subclass dltrain.Callback; the hooks have the same names and arguments")
    return f"callbacks must be dltrain.Callback instances, got {type(obj).__name__}"


# ================================================================== for dltrain.tuner
# A search (dltrain.tuner) runs short fits of the user's Trainer and then puts it back as it was: these give it the
# parts it restores, as functions of this module so that no other module reaches into the Trainer.
def run_state_of(trainer: Trainer) -> RunState:
    """The Trainer's `RunState` (loop state, published metrics, ``oom_expected``)."""
    return trainer._run  # noqa: SLF001  the Trainer's own module


def engine_of(trainer: Trainer) -> Engine:
    """The Trainer's `Engine` (its placed optimizers: `Engine.forget_optimizers`)."""
    return trainer._engine  # noqa: SLF001  the Trainer's own module


def _not_a_task(obj: Any) -> str:
    bases = [f"{c.__module__}.{c.__qualname__}" for c in type(obj).__mro__]
    if any(b.startswith(("lightning.pytorch", "pytorch_lightning")) for b in bases):
        return (f"{type(obj).__name__} is a LightningModule: subclass dltrain.Task instead (class "
                f"{type(obj).__name__}(dltrain.Task)); the hooks, self.log and configure_optimizers are the same")
    return f"Trainer needs a dltrain.Task, got {type(obj).__name__}"


def _print_results(stage: str, results: list[dict[str, float]]) -> None:
    for i, metrics in enumerate(results):
        title = f"{stage} results" + (f" (dataloader {i})" if len(results) > 1 else "")
        width = max([len(k) for k in metrics] + [len(title)])
        print(f"{title}\n" + "\n".join(f"  {k:<{width}}  {v:.6g}" for k, v in sorted(metrics.items())))
