"""`Trainer`: the settings of a run and the façade over the loops (``dltrain.loop``), on Lightning Fabric.

Fabric owns devices, strategies (DDP, FSDP), precision and cluster environments; ``dltrain.loop`` owns the loops;
``dltrain._checkpointing`` owns what a checkpoint holds. This module checks the arguments, places the task with
Fabric, dispatches hooks to callbacks and sends metrics to the loggers. Callbacks read the documented attributes
listed in docs/DESIGN.md ("The trainer view").
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.plugins.precision import Precision
from lightning.fabric.strategies import DDPStrategy, SingleDeviceStrategy, Strategy
from torch import Tensor

from dltrain import _checkpointing, _sharded
from dltrain import _config_checks as _checks
from dltrain import _data_sources as _data
from dltrain._compat import compiled_in_place, strategy_wraps_module
from dltrain._hooks import HookDispatcher, overrides
from dltrain._logged_values import LoggedValues
from dltrain._optim import ManualOptimizer, SchedulerConfig, parse_optimizers
from dltrain._resumable_loader import release_workers
from dltrain._step_output import add_note, raise_if_unused_parameters
from dltrain._trainer_members import LightningTrainerMembers
from dltrain.callbacks.base import Callback
from dltrain.distributed import Watchdog, destroy_process_group_at_exit, isolate_restart_round
from dltrain.errors import ConfigurationError, DistributedError
from dltrain.evaluation import evaluate, predict
from dltrain.loggers.base import Logger
from dltrain.loop import FitLoop, LoopState
from dltrain.strategies import FSDP2
from dltrain.task import Task

__all__ = ["Trainer", "seed_everything"]

_ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
_STRATEGIES = ("auto", "ddp", "fsdp2", "ddp_find_unused_parameters_true", "single_device")
_PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")
# Lightning's short spellings of the precisions.
_PRECISION_ALIASES: dict[Any, str] = {32: "32-true", "32": "32-true", 16: "16-mixed", "16": "16-mixed",
                                      "bf16": "bf16-mixed", 64: "64-true", "64": "64-true"}


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy and torch (all devices) and the DataLoader workers; returns the seed."""
    from lightning.fabric.utilities.seed import seed_everything as _seed

    return _seed(seed, workers=True, verbose=False)


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


def _as_floats(values: dict[str, Tensor]) -> dict[str, float]:
    """Tensors to numbers with one device-to-host copy per device (not one per value)."""
    by_device: dict[torch.device, list[str]] = {}
    for key, value in values.items():
        by_device.setdefault(value.device, []).append(key)
    floats: dict[str, float] = {}
    for keys in by_device.values():
        numbers = torch.stack([values[k].float().reshape(()) for k in keys]).tolist()
        floats.update(zip(keys, numbers))
    return floats


def _env_world() -> tuple[int, int] | None:
    """(local processes, nodes) when started by torchrun/SLURM-like launchers, from their environment."""
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:
        local = int(os.environ["LOCAL_WORLD_SIZE"])
        return local, max(int(os.environ["WORLD_SIZE"]) // max(local, 1), 1)
    return None


class Trainer(LightningTrainerMembers):
    """Runs a :class:`~dltrain.Task`'s loops on CPU, CUDA or MPS, on one device or many (DDP/FSDP via torchrun).

    Args:
        accelerator: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
        devices: number of devices (or ``"auto"``: under ``torchrun``, its processes per node; else 1).
        num_nodes: number of machines (``"auto"`` reads it from torchrun's environment).
        strategy: ``"auto"``, ``"ddp"``, ``"fsdp2"`` (FSDP2: parameters, gradients and optimizer state sharded
            over the ranks; checkpoints are sharded directories), :class:`dltrain.FSDP2` (``"fsdp2"`` with
            options: ``FSDP2(tensor_parallel_size=2)`` adds tensor parallelism on a 2-D mesh), or a
            ``lightning.fabric`` ``Strategy`` instance — e.g. ``DDPStrategy(timeout=timedelta(minutes=5),
            find_unused_parameters=True)`` to set the collective timeout or find unused parameters,
            ``ModelParallelStrategy`` for your own parallelism.
        precision: ``"32-true"``, ``"16-mixed"``, ``"bf16-mixed"`` or ``"bf16-true"``.
        max_epochs: stop after this many epochs (default 1000 when ``max_steps`` is not set either).
        max_steps: stop after this many optimizer steps.
        limit_train_batches / limit_val_batches: an int (batches) or a float (fraction of the epoch).
        val_check_interval: validate every n training batches (int) or fraction of an epoch (float).
        check_val_every_n_epoch: validate at the end of every n epochs (``None``: only by ``val_check_interval``).
        accumulate_grad_batches: batches per optimizer step.
        gradient_clip_val / gradient_clip_algorithm: clip gradients (``"norm"`` or ``"value"``) before each step.
        log_every_n_steps: how often step values are read from the device and sent to the loggers.
        callbacks: extra :class:`~dltrain.Callback` objects.
        logger: ``True`` (a CSVLogger), ``False``, a :class:`~dltrain.loggers.Logger` or a list of them.
        default_root_dir: where logs and checkpoints go (default: the working directory, as in Lightning).
        enable_progress_bar / enable_checkpointing: add the default progress bar / ``ModelCheckpoint``.
        deterministic: use deterministic algorithms only.
        seed: seed everything at construction, and seed the data order (default 0 for the data order).
        compile: ``True`` or a dict of :class:`~dltrain.callbacks.Compile` arguments (``modules``, ``backend``,
            ``mode``, ``dynamic``, ``fullgraph``, ``options``): adds that callback, which compiles the task's modules
            and reports compile time and recompilations. ``trainer.fit(torch.compile(task))`` works too.
        sync_batchnorm: convert BatchNorm layers to SyncBatchNorm when distributed.
        use_distributed_sampler: split the data by data-parallel rank: map-style loaders get a distributed,
            resumable sampler, streaming loaders their split (``StreamingDataLoader.set_split``). ``False``: loaders
            are used as given (a streaming loader without a split of its own is refused under tensor parallelism).
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
        devices: int | str | list[int] = "auto",
        num_nodes: int | str = "auto",
        strategy: str | FSDP2 | Strategy = "auto",
        precision: str | int = "32-true",
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int | None = None,
        min_steps: int | None = None,
        max_time: str | timedelta | dict[str, int] | None = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        fast_dev_run: int | bool = False,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        log_every_n_steps: int | None = None,
        callbacks: Iterable[Callback] | Callback | None = None,
        logger: bool | Logger | Iterable[Logger] | None = None,
        default_root_dir: str | os.PathLike[str] | None = None,
        enable_progress_bar: bool | None = None,
        enable_checkpointing: bool | None = None,
        enable_model_summary: bool | None = None,
        barebones: bool = False,
        profiler: str | Callback | None = None,
        deterministic: bool = False,
        benchmark: bool | None = None,
        detect_anomaly: bool = False,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        reload_dataloaders_every_n_epochs: int = 0,
        seed: int | None = None,
        compile: bool | dict[str, Any] = False,
        sync_batchnorm: bool = False,
        on_nonfinite_loss: str = "raise",
        **unknown: Any,
    ) -> None:
        if unknown:
            _refuse_unknown_arguments(unknown)
        precision = _PRECISION_ALIASES.get(precision, precision)  # type: ignore[call-overload]
        gradient_clip_algorithm = gradient_clip_algorithm or "norm"
        log_every_n_steps = 50 if log_every_n_steps is None else log_every_n_steps
        fast_dev_run = int(fast_dev_run)
        if fast_dev_run < 0:
            raise ConfigurationError(f"fast_dev_run={fast_dev_run}: use True, False or a number of batches")
        # fast_dev_run and barebones switch off what would write files or cost time (as in Lightning).
        quiet = bool(fast_dev_run) or barebones
        for name, value in (("logger", logger), ("enable_checkpointing", enable_checkpointing),
                            ("enable_model_summary", enable_model_summary), ("enable_progress_bar", enable_progress_bar)):
            if barebones and value:
                raise ConfigurationError(f"barebones=True switches {name} off; drop {name}={value!r}")
        logger = (not quiet) if logger is None else logger
        enable_checkpointing = (not quiet) if enable_checkpointing is None else enable_checkpointing
        enable_model_summary = (not quiet) if enable_model_summary is None else enable_model_summary
        enable_progress_bar = (not barebones) if enable_progress_bar is None else enable_progress_bar
        if num_sanity_val_steps is None:
            num_sanity_val_steps = 0 if quiet else 2
        if fast_dev_run:
            max_epochs, max_steps = 1, fast_dev_run
            limit_train_batches = limit_val_batches = limit_test_batches = limit_predict_batches = fast_dev_run
            val_check_interval = None
        self._check_choices(accelerator, strategy, precision, gradient_clip_algorithm, on_nonfinite_loss)
        if accumulate_grad_batches < 1:
            raise ConfigurationError(f"accumulate_grad_batches={accumulate_grad_batches}: use 1 or more")
        if log_every_n_steps < 1:
            raise ConfigurationError(f"log_every_n_steps={log_every_n_steps}: use 1 or more")
        env = _env_world()
        if devices == "auto" and env is not None:
            devices = env[0]
        if num_nodes == "auto":
            num_nodes = env[1] if env is not None else 1
        if seed is not None:
            seed_everything(seed)
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        if precision == "32":
            precision = "32-true"
        fabric_strategy = _sharded.resolve_strategy(strategy, accelerator, devices, int(num_nodes), str(precision))
        try:
            self.fabric = Fabric(
                accelerator=accelerator,
                devices=devices,
                num_nodes=int(num_nodes),
                strategy=fabric_strategy,
                precision=precision,  # type: ignore[arg-type]
            )
        except (ValueError, RuntimeError, TypeError) as err:
            raise ConfigurationError(
                f"cannot run with accelerator={accelerator!r}, devices={devices!r}, strategy={strategy!r}, "
                f"precision={precision!r}: {err}"
            ) from err
        self._check_precision_supported(str(precision))
        if sync_batchnorm and self.fabric.device.type != "cuda":
            raise ConfigurationError(
                "sync_batchnorm=True needs CUDA devices (torch's SyncBatchNorm runs on GPUs only); on "
                f"{self.fabric.device.type} leave it off"
            )
        isolate_restart_round(self.fabric.strategy)  # before launch: see its docstring (torchrun restarts)
        self.fabric.launch()
        destroy_process_group_at_exit()
        self._layout = _sharded.layout_of(self.fabric.strategy, self.fabric.global_rank, self.fabric.world_size)

        if benchmark is not None:
            torch.backends.cudnn.benchmark = benchmark
        self.max_epochs = max_epochs
        self.min_epochs = min_epochs or 0
        self.max_steps = max_steps if max_steps is not None else -1
        self.min_steps = min_steps or 0
        self.max_time = max_time
        self.limit_train_batches = limit_train_batches
        self.limit_val_batches = limit_val_batches
        self.limit_test_batches = limit_test_batches
        self.limit_predict_batches = limit_predict_batches
        self.fast_dev_run = fast_dev_run
        self.num_sanity_val_steps = num_sanity_val_steps
        self.detect_anomaly = detect_anomaly
        self.inference_mode = inference_mode
        self.use_distributed_sampler = use_distributed_sampler
        self.reload_dataloaders_every_n_epochs = reload_dataloaders_every_n_epochs
        self.val_check_interval = val_check_interval
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.log_every_n_steps = log_every_n_steps
        # Lightning's default: the working directory (runs go to ./lightning_logs/version_<N>/); URLs kept as given.
        root = os.fspath(default_root_dir) if default_root_dir is not None else os.getcwd()
        self.default_root_dir = root if "://" in root else os.path.normpath(os.path.expanduser(root))
        self.seed = seed if seed is not None else 0
        self.compile = compile
        self.sync_batchnorm = sync_batchnorm
        self.on_nonfinite_loss = on_nonfinite_loss
        self.precision = precision
        self.barebones = barebones
        self._status = "initializing"  # trainer.state.status: running, finished, interrupted
        self._ckpt_path: str | None = None  # the checkpoint the last stage loaded (trainer.ckpt_path)
        self._oom_expected = False  # set by dltrain.tuner while a batch-size trial runs

        self._hooks = HookDispatcher(self, self._default_callbacks(
            callbacks, progress=enable_progress_bar, checkpointing=enable_checkpointing,
            summary=enable_model_summary, profiler=profiler, max_time=max_time, compile=compile,
        ))
        self.loggers: list[Logger] = self._make_loggers(logger)

        # The trainer view (docs/DESIGN.md): what callbacks and tasks may read. Loop progress is `loop_state`.
        self.loop_state = LoopState()
        self.stage: str | None = None
        self._callback_metrics: dict[str, Tensor] = {}  # what was published (see the callback_metrics property)
        self.logged_metrics: dict[str, float] = {}
        self._progress_bar_metrics: dict[str, float] = {}  # published (see the progress_bar_metrics property)
        self.num_training_batches: float = float("inf")
        self.num_val_batches: list[float] = []  # one count per loader, as in Lightning
        self.num_test_batches: list[float] = []
        self.num_predict_batches: list[float] = []
        self.train_dataloader: Any = None
        self.val_dataloaders: Any = None  # None: this fit runs no validation (else one loader or a list)
        self.test_dataloaders: Any = None
        self.predict_dataloaders: Any = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[SchedulerConfig] = []
        self.sanity_checking = False  # True while the sanity check (num_sanity_val_steps batches) runs

        # Set when a task is placed (_setup_task): what Fabric returned and how steps run on this strategy.
        self._task: Task | None = None
        self._placed_task: Task | None = None
        self._fabric_module: Any = None
        self._fabric_optimizers: list[Any] = []  # Fabric's wrappers of `optimizers`, in the same order
        self._manual_optimizers: list[ManualOptimizer] = []  # what Task.optimizers() hands out
        self._configured_task: Task | None = None  # configure_callbacks/configure_model ran for this task
        self.datamodule: Any = None
        self._plain = False  # one device, full precision: backward and optimizer step called directly
        self._strategy_wraps_module = False  # DDP/FSDP: training steps go through the wrapper's forward
        self._strategy_shards_module = False  # FSDP: evaluation steps too
        self._sharded_in_place = False  # FSDP2: fully_shard's hooks on the task itself, steps called directly
        self._syncs_gradients = False  # a backward on one rank waits for the others' (DDP, FSDP2; several ranks)
        self._check_loss_on_host = True  # read the loss every step (CPU, or skipping non-finite steps)
        self._fit_loop: FitLoop | None = None
        self._watchdog: Watchdog | None = None

    # ================================================================== the trainer view
    @property
    def global_step(self) -> int:
        """Optimizer steps taken."""
        return self.loop_state.global_step

    @property
    def current_epoch(self) -> int:
        return self.loop_state.epoch

    @property
    def should_stop(self) -> bool:
        """Set it to stop training at the end of this batch (ORed over ranks at the end of the epoch)."""
        return self.loop_state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.loop_state.should_stop = bool(value)

    @property
    def is_last_batch(self) -> bool:
        """Whether the training batch being run is the last of its epoch."""
        return self._fit_loop is not None and self._fit_loop.is_last_batch

    @property
    def global_rank(self) -> int:
        return self.fabric.global_rank

    @property
    def local_rank(self) -> int:
        return self.fabric.local_rank

    @property
    def world_size(self) -> int:
        return self.fabric.world_size

    @property
    def is_global_zero(self) -> bool:
        return self.fabric.is_global_zero

    @property
    def data_parallel_rank(self) -> int:
        """This rank's index among the data-parallel replicas (what data it reads); ``global_rank`` without
        tensor parallelism. Tensor-parallel peers share it."""
        return self._layout.rank

    @property
    def data_parallel_size(self) -> int:
        """How many replicas read different data (``world_size // tensor_parallel_size``)."""
        return self._layout.size

    @property
    def device(self) -> torch.device:
        return self.fabric.device

    @property
    def strategy(self) -> Strategy:
        return self.fabric.strategy

    @property
    def callbacks(self) -> list[Callback]:
        return self._hooks.callbacks

    @callbacks.setter
    def callbacks(self, callbacks: list[Callback]) -> None:
        self._hooks.callbacks = callbacks

    @property
    def logger(self) -> Logger | None:
        return self.loggers[0] if self.loggers else None

    @property
    def checkpoint_callback(self) -> Any:
        from dltrain.callbacks.checkpoint import ModelCheckpoint

        return next((c for c in self.callbacks if isinstance(c, ModelCheckpoint)), None)

    @property
    def profiler(self) -> Any:
        """The profiler callback (``Trainer(profiler=...)``), or one that measures nothing: ``with
        trainer.profiler.profile("name"):`` works either way."""
        from dltrain.callbacks.profiler import PassThroughProfiler, Profiler

        found = next((c for c in self.callbacks if isinstance(c, Profiler)), None)
        return found if found is not None else PassThroughProfiler()

    @property
    def estimated_stepping_batches(self) -> float:
        """Optimizer steps the whole fit will take (for schedulers such as OneCycleLR)."""
        batches = self.num_training_batches
        if not math.isfinite(batches):
            total = float("inf")
        else:
            total = math.ceil(batches / self.accumulate_grad_batches) * (self.max_epochs or 1000)
        return min(total, self.max_steps) if self.max_steps > 0 else total

    # ================================================================== set-up helpers
    @staticmethod
    def _check_choices(accelerator: Any, strategy: Any, precision: Any, clip: str, nonfinite: str) -> None:
        from dltrain._refusals import refuse

        if accelerator in ("tpu", "hpu", "ipu"):
            refuse('Trainer(accelerator="tpu"/"hpu"/"ipu")')
        if isinstance(strategy, str) and strategy.startswith(("deepspeed", "xla", "hpu")):
            refuse('Trainer(strategy="deepspeed"/"fsdp"/"xla"/"hpu_*")')
        if isinstance(accelerator, str) and accelerator not in _ACCELERATORS:
            raise ConfigurationError(f"unknown accelerator {accelerator!r}; use one of {_ACCELERATORS}")
        from lightning.fabric.strategies import FSDPStrategy

        if strategy == "fsdp" or isinstance(strategy, FSDPStrategy):
            # FSDP1's checkpoints would need their own path (its optimizer state is per rank); FSDP2's go through
            # torch.distributed.checkpoint and reshard.
            raise ConfigurationError(
                'strategy="fsdp" (FSDP1) is not supported: use strategy="fsdp2" (FSDP2, same sharding of '
                "parameters, gradients and optimizer state; checkpoints resume at any world size)"
            )
        if isinstance(strategy, str) and strategy not in _STRATEGIES:
            raise ConfigurationError(
                f"unknown strategy {strategy!r}; use one of {_STRATEGIES}, dltrain.FSDP2(...) or a lightning.fabric "
                "Strategy instance"
            )
        if precision not in _PRECISIONS:
            raise ConfigurationError(f"unknown precision {precision!r}; use one of {_PRECISIONS}")
        if clip not in ("norm", "value"):
            raise ConfigurationError(f"gradient_clip_algorithm={clip!r}: use 'norm' or 'value'")
        if nonfinite not in ("raise", "skip", "ignore"):
            raise ConfigurationError(f"on_nonfinite_loss={nonfinite!r}: use 'raise', 'skip' or 'ignore'")

    def _check_precision_supported(self, precision: str) -> None:
        device = self.fabric.device
        if device.type == "cpu" and precision == "16-mixed":
            raise ConfigurationError(
                "precision='16-mixed' needs a GPU (float16 autocast with a gradient scaler); on CPU use "
                "'bf16-mixed' or '32-true'"
            )
        if device.type == "cuda" and precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
            raise ConfigurationError(
                f"precision={precision!r}: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                "use '16-mixed'"
            )
        if device.type == "mps" and precision in ("16-mixed", "bf16-true", "64-true"):
            raise ConfigurationError(f"precision={precision!r} is not supported on MPS; use '32-true' or 'bf16-mixed'")

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
        task._trainer = self
        self.stage = stage
        self._status = "running"
        self.datamodule = datamodule

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
        task.configure_model()

    def _setup_task(self, task: Task, with_optimizer: bool) -> None:
        """Place the task (and its optimizers) with Fabric. Done once per Trainer and task."""
        if self._placed_task is task and (self._fabric_optimizers or not with_optimizer):
            return
        if self.sync_batchnorm and self.world_size > 1:
            task = torch.nn.SyncBatchNorm.convert_sync_batchnorm(task)  # type: ignore[assignment]
        # FSDP2 replaces the parameters with sharded ones: the task is placed (once) before configure_optimizers.
        sharded = _sharded.is_fsdp2(self)
        if not sharded:
            _sharded.check_no_dtensors(task, self.strategy)
        if sharded and self._placed_task is not task:
            self._fabric_module = self.fabric.setup_module(task)
            _sharded.register_step_methods(task)  # also when a ModelParallelStrategy's own function sharded it
        if with_optimizer:
            optimizers, schedulers = parse_optimizers(task.configure_optimizers())
            if len(optimizers) > 1 and task.automatic_optimization:
                raise ConfigurationError(
                    f"configure_optimizers() returned {len(optimizers)} optimizers: several optimizers need manual "
                    "optimization (set self.automatic_optimization = False in __init__ and step them in "
                    "training_step, as in Lightning), or put several parameter groups in one optimizer"
                )
            if sharded:
                placed_optimizers = self.fabric.setup_optimizers(*optimizers) if optimizers else ()
                self._fabric_optimizers = list(placed_optimizers if isinstance(placed_optimizers, tuple)
                                               else (placed_optimizers,))
            else:
                placed = self.fabric.setup(task, *optimizers)
                self._fabric_module = placed[0] if optimizers else placed
                self._fabric_optimizers = list(placed[1:]) if optimizers else []
            self.optimizers = optimizers
            self.lr_scheduler_configs = schedulers
            self._manual_optimizers = [ManualOptimizer(self._hooks, self.loop_state, o, f)
                                       for o, f in zip(optimizers, self._fabric_optimizers)]
        elif not sharded:
            self._fabric_module = self.fabric.setup_module(task)
        self._placed_task = task
        full_precision = type(self.strategy.precision) is Precision
        # An overridden Task.backward is called through _backward (not the plain path's loss.backward()).
        self._plain = (full_precision and isinstance(self.strategy, SingleDeviceStrategy)
                       and not overrides(task, Task, "backward"))
        self._strategy_wraps_module = strategy_wraps_module(self._fabric_module)
        self._strategy_shards_module = self._strategy_wraps_module and not isinstance(self.strategy, DDPStrategy)
        self._sharded_in_place = _sharded.is_fsdp2(self)
        self._syncs_gradients = (self._strategy_wraps_module or self._sharded_in_place) and self.world_size > 1
        if self._strategy_wraps_module:
            self._fabric_module.mark_forward_method("_zero_grad_loss")
        self._check_loss_on_host = self.device.type == "cpu" or self.on_nonfinite_loss == "skip"

    # ================================================================== hooks and metrics
    @property
    def callback_metrics(self) -> dict[str, Tensor]:
        """The newest value of every logged metric: epoch aggregates and logging-step values as published, and
        the latest step values logged since (read on demand: logging costs nothing more per step)."""
        loop = self._fit_loop
        if loop is None or self.sanity_checking:
            return dict(self._callback_metrics)
        return {**self._callback_metrics, **loop.results.latest()}

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """The ``prog_bar`` values as numbers: as published, and the newest step values logged since. Reading it
        copies those from the device (one transfer): the progress bar reads it only when it redraws."""
        values = dict(self._progress_bar_metrics)
        loop = self._fit_loop
        if loop is not None and not self.sanity_checking:
            values.update(_as_floats(loop.results.latest(prog_bar=True)))
        return values

    def _publish(self, values: dict[str, Tensor], bar: dict[str, Tensor], results: LoggedValues) -> None:
        """Metrics read from a store: into ``callback_metrics`` and the progress bar, and to the loggers (global
        rank zero). Nothing leaves the sanity check."""
        if self.sanity_checking:
            return
        floats = {k: float(v) for k, v in values.items()}
        self._callback_metrics.update(values)
        self.logged_metrics.update(floats)
        self._progress_bar_metrics.update({k: floats[k] for k in bar})
        for_loggers = {k: v for k, v in floats.items() if k not in results.not_for_loggers}
        if for_loggers and self.is_global_zero:
            metrics = {**for_loggers, "epoch": float(self.current_epoch)}
            for lg in self.loggers:
                lg.log_metrics(metrics, self.global_step)

    def _epoch_end_callbacks(self, hook: str, results: LoggedValues) -> dict[str, Tensor]:
        """Reduce the epoch's values, run the callbacks' epoch-end hook, then send everything to the loggers.

        Callbacks see the epoch aggregates (in ``callback_metrics``) and what they log in the hook is reported with
        the same epoch, as in Lightning.
        """
        metrics, bar = results.read_epoch()
        if not self.sanity_checking:
            self._callback_metrics.update(metrics)
        from dltrain.callbacks.base import Callback, Checkpoint

        found = [cb for cb in self.callbacks if overrides(cb, Callback, hook)]
        for cb in found:
            if not isinstance(cb, Checkpoint):
                getattr(cb, hook)(self, self._hooks.task)
        more, more_bar = results.read_epoch()
        metrics.update(more)
        bar.update(more_bar)
        # Sent before the checkpoint callbacks run: an epoch-end checkpoint finds the epoch's values in the
        # loggers' files (a resume from it continues after them).
        self._publish(metrics, bar, results)
        for cb in found:
            if isinstance(cb, Checkpoint):
                getattr(cb, hook)(self, self._hooks.task)
        return metrics

    @staticmethod
    def _log_skipped(loader: Any, results: LoggedValues, stage: str) -> None:
        """Bad samples a loader skipped (``on_error="skip"``) this epoch, summed over ranks, as a metric."""
        report = getattr(loader, "epoch_report", None)
        skipped = report()["skipped"] if report is not None else 0
        if skipped:
            results.log(f"data/{stage}_skipped_samples", float(skipped), on_step=False, on_epoch=True,
                        prog_bar=False, sync_dist=False, batch_size=1, reduce_fx="sum")

    # ================================================================== what a step needs of the strategy
    def _run_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward with the ``on_before_backward``/``on_after_backward`` hooks (``Task.manual_backward``)."""
        for hook in self._hooks.hooks("on_before_backward"):
            hook(loss)
        if self._plain:
            loss.backward(*args, **kwargs)
        else:
            self._backward(loss, *args, **kwargs)
        if self._strategy_wraps_module and not self._strategy_shards_module and self.world_size > 1:
            self._average_gradients()
        for hook in self._hooks.hooks("on_after_backward"):
            hook()

    def _average_gradients(self) -> None:
        """Manual optimization under DDP: the task's steps bypass DDP's forward (its reducer allows one backward
        per forward), so each ``manual_backward`` averages the gradients over the ranks itself, in one
        all-reduce. Every rank must produce gradients for the same parameters (true of the same code on every
        rank; a mismatch fails in the all-reduce rather than training on unsynced gradients)."""
        assert self._task is not None
        grads = [p.grad for p in self._task.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Fabric's backward (precision scaling, strategy hooks); the plain path calls ``loss.backward()``.

        A task that overrides ``backward`` gets the loss scaled as the precision needs (``16-mixed``), as Lightning
        calls it."""
        task_backward = self._hooks.task_hook("backward")
        if task_backward is not None:
            scaler = getattr(self.strategy.precision, "scaler", None)
            task_backward(scaler.scale(loss) if scaler is not None else loss, *args, **kwargs)
            return
        try:
            self.fabric.backward(loss, *args, model=self._fabric_module, **kwargs)
        except RuntimeError as err:
            raise_if_unused_parameters(err)
            raise

    def _fabric_optimizer_of(self, optimizer: torch.optim.Optimizer) -> Any:
        for raw, wrapped in zip(self.optimizers, self._fabric_optimizers):
            if raw is optimizer:
                return wrapped
        return optimizer

    def _clip(self, optimizer: torch.optim.Optimizer, value: float, algorithm: str) -> None:
        fabric_optimizer = self._fabric_optimizer_of(optimizer)
        if algorithm == "norm":
            self.fabric.clip_gradients(self._fabric_module, fabric_optimizer, max_norm=value)
        elif algorithm == "value":
            self.fabric.clip_gradients(self._fabric_module, fabric_optimizer, clip_val=value)
        else:
            raise ConfigurationError(f"gradient_clip_algorithm={algorithm!r}: use 'norm' or 'value'")

    def _zero_loss(self, batch: Any, batch_idx: int, forward_done: bool) -> Tensor:
        """A loss whose gradient is zero for every parameter, for a rank with nothing to contribute to a step."""
        assert self._task is not None
        if self._sharded_in_place:
            # FSDP2 reduces each module's gradients as its backward reaches it, so a rank must run the same modules
            # forward and backward as the others: a loss made of the parameters alone would not.
            raise DistributedError(
                f"rank {self.global_rank} has no loss for batch {batch_idx} ("
                f"{'the batch was None' if batch is None else 'training_step returned None, or on_nonfinite_loss skipped it'}"
                "): with strategy=\"fsdp2\" every rank must compute a loss for every batch. Return loss * 0 from "
                "training_step to contribute nothing, or use strategy=\"ddp\""
            )
        if forward_done:  # DDP's forward already ran for this step: it now expects one backward
            return self._task._zero_grad_loss(batch, batch_idx)
        return self._fabric_module._zero_grad_loss(batch, batch_idx)  # through the wrapper's forward

    def _step_scheduler(self, config: SchedulerConfig) -> None:
        metric = None
        if config.is_plateau:
            assert config.monitor is not None
            value = self.callback_metrics.get(config.monitor)
            if value is None:
                if config.interval == "step":
                    return
                raise ConfigurationError(
                    f"ReduceLROnPlateau monitors {config.monitor!r}, which was not logged; logged metrics: "
                    f"{sorted(self.callback_metrics)}"
                )
            metric = float(value)
        step = self._hooks.task_hook("lr_scheduler_step")
        if step is not None:
            step(config.scheduler, metric)
        elif metric is None:
            config.scheduler.step()
        else:
            config.scheduler.step(metric)

    # ================================================================== batch counts and ranks
    @staticmethod
    def _count_batches(loader: Any, limit: int | float | None) -> float:
        try:
            n: float = len(loader)
        except TypeError:
            n = float("inf")
        if limit is None:
            return n
        if isinstance(limit, float):
            if not math.isfinite(n):
                raise ConfigurationError(
                    f"a fractional batch limit ({limit}) needs a loader with a length; give an int instead"
                )
            return max(int(n * limit), 1) if limit > 0 else 0
        return min(n, int(limit))

    def _val_batches_interval(self, val: bool) -> int | None:
        """Validate every this many training batches (None: only at epoch ends)."""
        v = self.val_check_interval
        if v is None or not val:
            return None
        if isinstance(v, float) and v <= 1.0:
            if not math.isfinite(self.num_training_batches):
                raise ConfigurationError("val_check_interval as a fraction needs a training loader with a length")
            return max(int(self.num_training_batches * v), 1)
        return int(v)

    def _validate_after_epoch(self, epoch: int) -> bool:
        n = self.check_val_every_n_epoch
        return n is not None and (epoch + 1) % n == 0

    def _check_equal_lengths(self, remaining: int) -> None:
        """Every rank must run as many batches as the others, or DDP hangs: check once per epoch."""
        if self.world_size < 2 or not math.isfinite(self.num_training_batches):
            return
        from dltrain.distributed import gather_ints

        lengths = gather_ints(remaining, self.device)
        if len(set(lengths)) > 1:
            raise DistributedError(
                f"the ranks have different numbers of training batches this epoch ({dict(enumerate(lengths))}): "
                "DDP would hang at the end of the shortest. Use a plain DataLoader (dltrain distributes it evenly), "
                "dltrain.data.StreamingDataset, or make your sampler give every rank the same count."
            )

    def _report_exhausted(self, batches: int) -> None:
        if self.world_size > 1 and not math.isfinite(self.num_training_batches) and self._watchdog is not None:
            self._watchdog.report_exhausted(self.current_epoch, batches)

    def _any_rank(self, flag: bool) -> bool:
        if self.world_size < 2:
            return flag
        total = self.fabric.all_reduce(torch.tensor(float(flag), device=self.device), reduce_op="sum")
        assert isinstance(total, Tensor)
        return bool(total > 0)

    # ================================================================== fit
    def fit(
        self,
        model: Task,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Any = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Train ``model`` (a `Task`); resume from ``ckpt_path`` (a file, ``"last"``: the newest complete
        checkpoint, or ``"best"``).

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
                    validation when val_check_interval is reached (below)
                validation at the end of the epoch when check_val_every_n_epoch says so:
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
        if ckpt_path is None:  # dltrain's hook before set-up: the finders run their searches (fits of their own)
            self._hooks.call_callbacks("on_before_fit", train_dataloaders, val_dataloaders, datamodule)
            self._attach(task, "fit", datamodule)
        self._watchdog = None
        loop: FitLoop | None = None
        try:
            _data.prepare_and_setup(self, "fit")
            self._configure_task(task)
            _checks.check_removed_hooks(task, "fit")
            _checks.check_manual_optimization(self, task)
            train_source = _data.source(self, "train", train_dataloaders)
            _checks.check_loader(self, train_source, "train")
            val_source = _data.source(self, "val", val_dataloaders, required=False)
            if not _checks.validation_runs(self, task, val_source is not None and self.limit_val_batches != 0):
                val_source = None
            if val_source is not None:
                _checks.check_loader(self, val_source, "val")
            train_loader = _data.wrap(self, train_source, training=True)
            val_loaders = None if val_source is None else _data.wrap_all(self, val_source)
            self.train_dataloader = train_loader
            self.val_dataloaders = val_loaders if val_loaders is None or len(val_loaders) > 1 else val_loaders[0]
            self.num_training_batches = self._count_batches(train_loader, self.limit_train_batches)
            self._check_fit_inputs(task, val_loaders)
            # After the loaders: configure_optimizers may read trainer.estimated_stepping_batches.
            self._setup_task(task, with_optimizer=True)
            if self.max_epochs is None and self.max_steps < 0:
                self.max_epochs = _checks.default_max_epochs(self, self.max_time is not None)
            loop = FitLoop(self, task, train_loader, val_loaders)
            self._fit_loop = loop
            restored = _checkpointing.restore(self, loop, ckpt_path) if ckpt_path is not None else None
            self._ckpt_path = restored["_path"] if restored is not None else None
            if restored is not None and self.is_global_zero:
                sys.stderr.write(f"[dltrain] restored from {restored['_path']} at {loop.position()}\n")
                if loop.finished():
                    sys.stderr.write("[dltrain] that run is already complete (max_epochs/max_steps reached or "
                                     "stopped early): nothing to train; raise max_epochs to train further\n")
            self._watchdog = Watchdog(self.global_rank, self.world_size,
                                      lambda: (self.current_epoch, loop.batch_idx, loop.in_batches))
            if self.is_global_zero:
                for lg in self.loggers:
                    lg.log_hyperparams({**task.hparams, **self._trainer_hparams()})
            self._watchdog.start()
            self._hooks.call("on_fit_start")
            if restored is not None:  # after on_fit_start, as in Lightning (BaseFinetuning rebuilds groups there)
                _checkpointing.restore_training_state(self, restored)
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
            self._teardown("fit")

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

    def _trainer_hparams(self) -> dict[str, Any]:
        return {
            "trainer/max_epochs": self.max_epochs,
            "trainer/max_steps": self.max_steps,
            "trainer/precision": self.precision,
            "trainer/world_size": self.world_size,
            "trainer/accumulate_grad_batches": self.accumulate_grad_batches,
            "trainer/seed": self.seed,
        }

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
            if self.world_size > 1 and not (self._oom_expected and is_oom_error(exc)):
                sys.stderr.write(f"[dltrain] {where} failed: {type(exc).__name__}: {exc}\n")
                if self._watchdog is not None:
                    self._watchdog.report_error(self.global_step, exc)
        status = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
        self._status = "interrupted"
        for cb in self.callbacks:
            if overrides(cb, Callback, "on_exception"):
                with contextlib.suppress(Exception):
                    cb.on_exception(self, self._task, exc)  # type: ignore[arg-type]
        if self.is_global_zero:
            for lg in self.loggers:
                with contextlib.suppress(Exception):
                    lg.finalize(status)

    def _teardown(self, stage: str) -> None:
        """``teardown(stage)``: datamodule, callbacks, task (Lightning's order)."""
        if self._status == "running":
            self._status = "finished"
        if self.datamodule is not None:
            self.datamodule.teardown(stage)
        self._hooks.call_callbacks("teardown", stage)
        if self._task is not None:
            self._task.teardown(stage)
            self._task._results = None

    # ================================================================== evaluation and prediction
    def validate(self, model: Task | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
                 verbose: bool = True, datamodule: Any = None) -> list[dict[str, float]]:
        """Run the validation loop once; one dict of epoch metrics (reduced over all ranks) per loader."""
        return self._run_stage("validate", model, dataloaders, ckpt_path, verbose, datamodule)

    def test(self, model: Task | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
             verbose: bool = True, datamodule: Any = None) -> list[dict[str, float]]:
        """Run the test loop once; one dict of epoch metrics (reduced over all ranks) per loader."""
        return self._run_stage("test", model, dataloaders, ckpt_path, verbose, datamodule)

    def predict(self, model: Task | None = None, dataloaders: Any = None, datamodule: Any = None,
                return_predictions: bool | None = None, ckpt_path: str | None = None) -> Any:
        """Run ``predict_step`` on every batch; this rank's outputs, one per batch in order (``None`` for a batch
        the loader skipped whole); with several loaders, one list per loader."""
        outputs = self._run_stage("predict", model, dataloaders, ckpt_path, False, datamodule)
        return None if return_predictions is False else outputs

    def _run_stage(self, stage: str, model: Task | None, dataloaders: Any, ckpt_path: str | None, verbose: bool,
                   datamodule: Any) -> Any:
        task = compiled_in_place(model) if model is not None else self._task
        if task is None:
            raise ConfigurationError(f"trainer.{stage}() needs a task: pass model=... (or call fit first)")
        if datamodule is None and _data.is_datamodule(dataloaders):
            datamodule, dataloaders = dataloaders, None
        self._attach(task, stage, datamodule if datamodule is not None else self.datamodule)
        loaders: list[Any] = []
        try:
            _data.prepare_and_setup(self, stage)
            self._configure_task(task)
            kind = {"validate": "val", "test": "test", "predict": "predict"}[stage]
            _checks.check_removed_hooks(task, stage)
            given = _data.source(self, kind, dataloaders)
            _checks.check_loader(self, given, kind)
            loaders = _data.wrap_all(self, given)
            self._setup_task(task, with_optimizer=False)
            self._ckpt_path = None
            if ckpt_path is not None:
                self._ckpt_path = str(_checkpointing.load_weights(self, ckpt_path))
            current = loaders[0] if len(loaders) == 1 else loaders
            if stage == "predict":
                self.predict_dataloaders = current
                return predict(self, task, loaders, self.limit_predict_batches)
            if stage == "test":
                self.test_dataloaders = current
            self._fit_loop = None
            limit = self.limit_val_batches if stage == "validate" else self.limit_test_batches
            results = evaluate(self, task, loaders, "validation" if stage == "validate" else "test", limit)
            if verbose and self.is_global_zero:
                _print_results(stage, results)
            return results
        except BaseException as exc:
            self._handle_exception(exc)
            raise
        finally:
            release_workers(loaders)
            self._teardown(stage)

    # ================================================================== checkpoints
    def save_checkpoint(self, filepath: str | os.PathLike[str], weights_only: bool = False,
                        storage_options: Any = None) -> None:
        """Write a checkpoint of everything needed to resume exactly (every rank must call it); ``weights_only``:
        the weights, hparams and loop counters only (for evaluation and ``load_from_checkpoint``).

        Taken between optimizer steps of an accumulation window, the partial gradients are not saved.
        ``storage_options`` is Lightning's ``CheckpointIO`` argument: dltrain writes local paths itself and refuses
        it.
        """
        if storage_options is not None:
            raise ConfigurationError("save_checkpoint(storage_options=...): dltrain has no CheckpointIO plugins; "
                                     "write to a local path")
        _checkpointing.save(self, filepath, weights_only=weights_only)


def _checkpoints_last(callbacks: list[Callback]) -> list[Callback]:
    """Checkpoint callbacks run after the others (as in Lightning): an epoch-end checkpoint then holds what every
    other callback decided at that epoch end (EarlyStopping's should_stop, its wait count)."""
    from dltrain.callbacks.base import Checkpoint

    return [c for c in callbacks if not isinstance(c, Checkpoint)] + [c for c in callbacks if isinstance(c, Checkpoint)]


def _not_a_callback(obj: Any) -> str:
    if type(obj).__module__.startswith(("lightning.pytorch", "pytorch_lightning")):
        return (f"{type(obj).__name__} is a Lightning callback: use dltrain's (dltrain.callbacks.{type(obj).__name__} "
                "where it exists), or subclass dltrain.Callback; the hooks have the same names and arguments")
    return f"callbacks must be dltrain.Callback instances, got {type(obj).__name__}"


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
