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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.plugins.precision import Precision
from lightning.fabric.strategies import DDPStrategy, SingleDeviceStrategy, Strategy
from torch import Tensor

from dltrain import _checkpointing
from dltrain._compat import strategy_wraps_module
from dltrain._logged_values import LoggedValues
from dltrain._optim import SchedulerConfig, parse_optimizers
from dltrain._resumable_loader import wrap_loader
from dltrain._step_output import add_note, raise_if_unused_parameters
from dltrain.callbacks.base import Callback, overrides
from dltrain.distributed import Watchdog, isolate_restart_round
from dltrain.errors import ConfigurationError, DistributedError
from dltrain.loggers.base import Logger
from dltrain.loop import FitLoop, LoopState, evaluate, predict
from dltrain.task import Task

__all__ = ["Trainer", "seed_everything"]

_ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
_STRATEGIES = ("auto", "ddp", "fsdp", "ddp_find_unused_parameters_true", "single_device")
_PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy and torch (all devices) and the DataLoader workers; returns the seed."""
    from lightning.fabric.utilities.seed import seed_everything as _seed

    return _seed(seed, workers=True, verbose=False)


def _env_world() -> tuple[int, int] | None:
    """(local processes, nodes) when started by torchrun/SLURM-like launchers, from their environment."""
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:
        local = int(os.environ["LOCAL_WORLD_SIZE"])
        return local, max(int(os.environ["WORLD_SIZE"]) // max(local, 1), 1)
    return None


class Trainer:
    """Runs a :class:`~dltrain.Task`'s loops on CPU, CUDA or MPS, on one device or many (DDP/FSDP via torchrun).

    Args:
        accelerator: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
        devices: number of devices (or ``"auto"``: under ``torchrun``, its processes per node; else 1).
        num_nodes: number of machines (``"auto"`` reads it from torchrun's environment).
        strategy: ``"auto"``, ``"ddp"``, ``"fsdp"``, or a ``lightning.fabric`` ``Strategy`` instance — e.g.
            ``DDPStrategy(timeout=timedelta(minutes=5), find_unused_parameters=True)`` to set the collective
            timeout or find unused parameters.
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
        default_root_dir: where logs and checkpoints go (default ``./runs``).
        enable_progress_bar / enable_checkpointing: add the default progress bar / ``ModelCheckpoint``.
        deterministic: use deterministic algorithms only.
        seed: seed everything at construction, and seed the data order (default 0 for the data order).
        compile: ``torch.compile`` the task's submodules.
        sync_batchnorm: convert BatchNorm layers to SyncBatchNorm when distributed.
        on_nonfinite_loss: ``"raise"`` (default: error naming the step), ``"skip"`` (skip that step; on CUDA
            this reads the loss every step) or ``"ignore"``.

    Example:
        >>> trainer = Trainer(max_epochs=3, accelerator="cpu", log_every_n_steps=10)
        >>> trainer.fit(task, train_loader, val_loader)          # doctest: +SKIP
        >>> trainer.test(task, test_loader)                      # doctest: +SKIP
        {'test/acc': 0.98}
    """

    def __init__(
        self,
        *,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        num_nodes: int | str = "auto",
        strategy: str | Strategy = "auto",
        precision: str = "32-true",
        max_epochs: int | None = None,
        max_steps: int | None = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        log_every_n_steps: int = 50,
        callbacks: Iterable[Callback] | Callback | None = None,
        logger: bool | Logger | Iterable[Logger] = True,
        default_root_dir: str | os.PathLike[str] | None = None,
        enable_progress_bar: bool = True,
        enable_checkpointing: bool = True,
        deterministic: bool = False,
        seed: int | None = None,
        compile: bool = False,
        sync_batchnorm: bool = False,
        on_nonfinite_loss: str = "raise",
    ) -> None:
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
        try:
            self.fabric = Fabric(
                accelerator=accelerator,
                devices=devices,
                num_nodes=int(num_nodes),
                strategy=strategy,
                precision=precision,  # type: ignore[arg-type]
            )
        except (ValueError, RuntimeError, TypeError) as err:
            raise ConfigurationError(
                f"cannot run with accelerator={accelerator!r}, devices={devices!r}, strategy={strategy!r}, "
                f"precision={precision!r}: {err}"
            ) from err
        self._check_precision_supported(precision)
        if sync_batchnorm and self.fabric.device.type != "cuda":
            raise ConfigurationError(
                "sync_batchnorm=True needs CUDA devices (torch's SyncBatchNorm runs on GPUs only); on "
                f"{self.fabric.device.type} leave it off"
            )
        isolate_restart_round(self.fabric.strategy)  # before launch: see its docstring (torchrun restarts)
        self.fabric.launch()

        self.max_epochs = max_epochs
        self.max_steps = max_steps if max_steps is not None else -1
        self.limit_train_batches = limit_train_batches
        self.limit_val_batches = limit_val_batches
        self.val_check_interval = val_check_interval
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.log_every_n_steps = log_every_n_steps
        self.default_root_dir = str(default_root_dir if default_root_dir is not None else Path.cwd() / "runs")
        self.seed = seed if seed is not None else 0
        self.compile = compile
        self.sync_batchnorm = sync_batchnorm
        self.on_nonfinite_loss = on_nonfinite_loss
        self.precision = precision

        self.callbacks: list[Callback] = self._default_callbacks(callbacks, enable_progress_bar, enable_checkpointing)
        self.loggers: list[Logger] = self._make_loggers(logger)

        # The trainer view (docs/DESIGN.md): what callbacks and tasks may read. Loop progress is `loop_state`.
        self.loop_state = LoopState()
        self.stage: str | None = None
        self.callback_metrics: dict[str, Tensor] = {}
        self.logged_metrics: dict[str, float] = {}
        self.progress_bar_metrics: dict[str, float] = {}
        self.num_training_batches: float = float("inf")
        self.num_val_batches: float = 0
        self.num_test_batches: float = 0
        self.num_predict_batches: float = 0
        self.train_dataloader: Any = None
        self.val_dataloaders: Any = None  # None: this fit runs no validation
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[SchedulerConfig] = []
        self.sanity_checking = False  # Lightning's name; dltrain runs no sanity check

        # Set when a task is placed (_setup_task): what Fabric returned and how steps run on this strategy.
        self._task: Task | None = None
        self._placed_task: Task | None = None
        self._fabric_module: Any = None
        self._fabric_optimizer: Any = None
        self._plain = False  # one device, full precision: backward and optimizer step called directly
        self._strategy_wraps_module = False  # DDP/FSDP: training steps go through the wrapper's forward
        self._strategy_shards_module = False  # FSDP: evaluation steps too
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
    def device(self) -> torch.device:
        return self.fabric.device

    @property
    def strategy(self) -> Strategy:
        return self.fabric.strategy

    @property
    def logger(self) -> Logger | None:
        return self.loggers[0] if self.loggers else None

    @property
    def checkpoint_callback(self) -> Any:
        from dltrain.callbacks.checkpoint import ModelCheckpoint

        return next((c for c in self.callbacks if isinstance(c, ModelCheckpoint)), None)

    @property
    def estimated_stepping_batches(self) -> float:
        """Optimizer steps the whole fit will take (for schedulers such as OneCycleLR)."""
        per_epoch = math.ceil(self.num_training_batches / self.accumulate_grad_batches)
        total = per_epoch * (self.max_epochs or 1000) if math.isfinite(per_epoch) else float("inf")
        return min(total, self.max_steps) if self.max_steps > 0 else total

    # ================================================================== set-up helpers
    @staticmethod
    def _check_choices(accelerator: Any, strategy: Any, precision: Any, clip: str, nonfinite: str) -> None:
        if isinstance(accelerator, str) and accelerator not in _ACCELERATORS:
            raise ConfigurationError(f"unknown accelerator {accelerator!r}; use one of {_ACCELERATORS}")
        if isinstance(strategy, str) and strategy not in _STRATEGIES:
            raise ConfigurationError(
                f"unknown strategy {strategy!r}; use one of {_STRATEGIES} or a lightning.fabric Strategy instance"
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

    def _default_callbacks(self, callbacks: Any, progress: bool, checkpointing: bool) -> list[Callback]:
        from dltrain.callbacks.checkpoint import ModelCheckpoint
        from dltrain.callbacks.progress import ProgressBar

        if callbacks is None:
            result: list[Callback] = []
        elif isinstance(callbacks, Callback):
            result = [callbacks]
        else:
            result = list(callbacks)
        for cb in result:
            if not isinstance(cb, Callback):
                raise ConfigurationError(f"callbacks must be dltrain.Callback instances, got {type(cb).__name__}")
        if progress and not any(isinstance(c, ProgressBar) for c in result):
            result.append(ProgressBar())
        if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in result):
            result.append(ModelCheckpoint())
        if not checkpointing and any(isinstance(c, ModelCheckpoint) for c in result):
            raise ConfigurationError("enable_checkpointing=False but a ModelCheckpoint is in callbacks; drop one")
        # Checkpoint callbacks run last (as in Lightning): an epoch-end checkpoint then holds what every other
        # callback decided at that epoch end (EarlyStopping's should_stop, its wait count).
        return [c for c in result if not isinstance(c, ModelCheckpoint)] + [
            c for c in result if isinstance(c, ModelCheckpoint)
        ]

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

    def _attach(self, task: Task, stage: str) -> None:
        if not isinstance(task, Task):
            raise ConfigurationError(f"Trainer needs a dltrain.Task, got {type(task).__name__}")
        self._task = task
        task._trainer = self
        self.stage = stage

    def _setup_task(self, task: Task, with_optimizer: bool) -> None:
        """Place the task (and its optimizer) with Fabric. Done once per Trainer and task."""
        if self._placed_task is task and (self._fabric_optimizer is not None or not with_optimizer):
            return
        if self.sync_batchnorm and self.world_size > 1:
            task = torch.nn.SyncBatchNorm.convert_sync_batchnorm(task)  # type: ignore[assignment]
        if self.compile:
            from torchmetrics import Metric

            for child in task.children():
                if not isinstance(child, Metric):
                    child.compile()
        if with_optimizer:
            optimizer, schedulers = parse_optimizers(task.configure_optimizers())
            self._fabric_module, self._fabric_optimizer = self.fabric.setup(task, optimizer)
            self.optimizers = [optimizer]
            self.lr_scheduler_configs = schedulers
        else:
            self._fabric_module = self.fabric.setup_module(task)
        self._placed_task = task
        full_precision = type(self.strategy.precision) is Precision
        self._plain = full_precision and isinstance(self.strategy, SingleDeviceStrategy)
        self._strategy_wraps_module = strategy_wraps_module(self._fabric_module)
        self._strategy_shards_module = self._strategy_wraps_module and not isinstance(self.strategy, DDPStrategy)
        if self._strategy_wraps_module:
            self._fabric_module.mark_forward_method("_zero_grad_loss")
        self._check_loss_on_host = self.device.type == "cpu" or self.on_nonfinite_loss == "skip"

    # ================================================================== hooks and metrics
    def _hooks(self, name: str) -> list[Any]:
        """Bound ``name`` of the callbacks that override it: dispatch costs nothing for the others."""
        return [getattr(cb, name) for cb in self.callbacks if overrides(cb, name)]

    def _call_hook(self, name: str, *args: Any) -> None:
        for cb in self.callbacks:
            if overrides(cb, name):
                getattr(cb, name)(self, self._task, *args)

    def _publish(self, values: dict[str, Tensor], bar: dict[str, Tensor]) -> None:
        floats = {k: float(v) for k, v in values.items()}
        self.callback_metrics.update(values)
        self.logged_metrics.update(floats)
        self.progress_bar_metrics.update({k: floats[k] for k in bar})
        if floats and self.is_global_zero:
            metrics = {**floats, "epoch": float(self.current_epoch)}
            for lg in self.loggers:
                lg.log_metrics(metrics, self.global_step)

    def _epoch_end_callbacks(self, hook: str, results: LoggedValues) -> dict[str, Tensor]:
        """Reduce the epoch's values, run the callbacks' epoch-end hook, then send everything to the loggers.

        Callbacks see the epoch aggregates (in ``callback_metrics``) and what they log in the hook is reported with
        the same epoch, as in Lightning.
        """
        metrics, bar = results.read_epoch()
        self.callback_metrics.update(metrics)
        self._call_hook(hook)
        more, more_bar = results.read_epoch()
        metrics.update(more)
        bar.update(more_bar)
        self._publish(metrics, bar)
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
    def _backward(self, loss: Tensor) -> None:
        """Fabric's backward (precision scaling, strategy hooks); the plain path calls ``loss.backward()``."""
        try:
            self.fabric.backward(loss, model=self._fabric_module)
        except RuntimeError as err:
            raise_if_unused_parameters(err)
            raise

    def _clip_gradients(self) -> None:
        if self.gradient_clip_algorithm == "norm":
            self.fabric.clip_gradients(self._fabric_module, self._fabric_optimizer, max_norm=self.gradient_clip_val)
        else:
            self.fabric.clip_gradients(self._fabric_module, self._fabric_optimizer, clip_val=self.gradient_clip_val)

    def _zero_loss(self, batch: Any, batch_idx: int, forward_done: bool) -> Tensor:
        """A loss whose gradient is zero for every parameter, for a rank with nothing to contribute to a step."""
        assert self._task is not None
        if forward_done:  # DDP's forward already ran for this step: it now expects one backward
            return self._task._zero_grad_loss(batch, batch_idx)
        return self._fabric_module._zero_grad_loss(batch, batch_idx)  # through the wrapper's forward

    def _step_scheduler(self, config: SchedulerConfig) -> None:
        if not config.is_plateau:
            config.scheduler.step()
            return
        assert config.monitor is not None
        value = self.callback_metrics.get(config.monitor)
        if value is None:
            if config.interval == "step":
                return
            raise ConfigurationError(
                f"ReduceLROnPlateau monitors {config.monitor!r}, which was not logged; logged metrics: "
                f"{sorted(self.callback_metrics)}"
            )
        config.scheduler.step(float(value))

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
        gathered = self.fabric.all_gather(torch.tensor(remaining, device=self.device))
        assert isinstance(gathered, Tensor)
        lengths = gathered.tolist()
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
        task: Task,
        train_dataloaders: Iterable[Any],
        val_dataloaders: Iterable[Any] | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Train ``task``; resume from ``ckpt_path`` (a file, or ``"last"``: the newest complete checkpoint).

        Hook order (task hooks run before callback hooks of the same name; the loops are in ``dltrain.loop``)::

            setup("fit")                                 callbacks
            on_fit_start                                 task, callbacks
            for each epoch:
                on_train_epoch_start                     task, callbacks
                for each batch:
                    on_after_batch_transfer              task (batch is on the device)
                    on_train_batch_start                 callbacks
                    training_step                        task
                    backward
                    on_before_optimizer_step             task, callbacks  (every accumulate_grad_batches, and
                                                                           at the epoch's last batch)
                    optimizer step, step-interval LR schedulers
                    on_train_batch_end                   callbacks
                    step values to the loggers           every log_every_n_steps optimizer steps
                    validation when val_check_interval is reached (below)
                validation at the end of the epoch when check_val_every_n_epoch says so:
                    on_validation_epoch_start            task, callbacks
                    validation_step for each batch       task; on_validation_batch_end callbacks
                    on_validation_epoch_end              task; epoch metrics reduced; callbacks; loggers
                on_train_epoch_end                       task; epoch metrics reduced; callbacks (ModelCheckpoint
                                                         last); loggers
                should_stop agreed over ranks; epoch-interval LR schedulers
            on_fit_end                                   task, callbacks
            teardown("fit")                              callbacks (also after an exception, after on_exception)

        Validation runs in ``eval()`` mode under ``torch.no_grad()`` and leaves the training RNG stream as it found
        it. Returning ``None`` from ``training_step`` skips that batch: no backward from it (under DDP the rank
        joins the gradient all-reduce with zeros, so the other ranks do not wait for it).
        """
        self._attach(task, "fit")
        wrap = dict(rank=self.global_rank, world_size=self.world_size, seed=self.seed)
        train_loader = wrap_loader(train_dataloaders, training=True, **wrap)
        val_loader = None if val_dataloaders is None else wrap_loader(val_dataloaders, training=False, **wrap)
        self.train_dataloader = train_loader
        self.val_dataloaders = val_loader
        self.num_training_batches = self._count_batches(train_loader, self.limit_train_batches)
        # After the loaders: configure_optimizers may read trainer.estimated_stepping_batches.
        self._setup_task(task, with_optimizer=True)
        if self.max_epochs is None and self.max_steps < 0:
            if not math.isfinite(self.num_training_batches):
                raise ConfigurationError(
                    "the training loader has no length and neither max_epochs nor max_steps is set, so training "
                    "might never stop: pass Trainer(max_steps=...) or Trainer(max_epochs=...)"
                )
            self.max_epochs = 1000
        loop = FitLoop(self, task, train_loader, val_loader)
        self._fit_loop = loop
        if ckpt_path is not None:
            _checkpointing.restore(self, loop, ckpt_path)
        self._watchdog = Watchdog(self.global_rank, self.world_size,
                                  lambda: (self.current_epoch, loop.batch_idx, loop.in_batches))
        try:
            self._call_hook("setup", "fit")
            if self.is_global_zero:
                for lg in self.loggers:
                    lg.log_hyperparams({**task.hparams, **self._trainer_hparams()})
            self._watchdog.start()
            task.on_fit_start()
            self._call_hook("on_fit_start")
            loop.run()
            task.on_fit_end()
            self._call_hook("on_fit_end")
            if self.is_global_zero:
                for lg in self.loggers:
                    lg.finalize("success")
        except BaseException as exc:
            self._handle_exception(exc)
            raise
        finally:
            self._watchdog.stop()
            loop.in_batches = False
            self._teardown("fit")

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
            if self.world_size > 1:
                sys.stderr.write(f"[dltrain] {where} failed: {type(exc).__name__}: {exc}\n")
                if self._watchdog is not None:
                    self._watchdog.report_error(self.global_step, exc)
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        for cb in self.callbacks:
            if overrides(cb, "on_exception"):
                with contextlib.suppress(Exception):
                    cb.on_exception(self, self._task, exc)  # type: ignore[arg-type]
        if self.is_global_zero:
            for lg in self.loggers:
                with contextlib.suppress(Exception):
                    lg.finalize(status)

    def _teardown(self, stage: str) -> None:
        self._call_hook("teardown", stage)
        if self._task is not None:
            self._task._results = None

    # ================================================================== evaluation and prediction
    def validate(self, task: Task, dataloaders: Iterable[Any], ckpt_path: str | None = None) -> dict[str, float]:
        """Run the validation loop once; returns the epoch metrics (reduced over all ranks)."""
        return self._run_stage(task, dataloaders, "validation", ckpt_path)

    def test(self, task: Task, dataloaders: Iterable[Any], ckpt_path: str | None = None) -> dict[str, float]:
        """Run the test loop once; returns the epoch metrics (reduced over all ranks)."""
        return self._run_stage(task, dataloaders, "test", ckpt_path)

    def predict(self, task: Task, dataloaders: Iterable[Any], ckpt_path: str | None = None) -> list[Any]:
        """Run ``predict_step`` on every batch; returns this rank's outputs, one per batch, in order (``None``
        for a batch the loader skipped whole)."""
        return self._run_stage(task, dataloaders, "predict", ckpt_path)

    def _run_stage(self, task: Task, dataloaders: Any, stage: str, ckpt_path: str | None) -> Any:
        self._attach(task, stage)
        self._setup_task(task, with_optimizer=False)
        if ckpt_path is not None:
            _checkpointing.load_weights(self, ckpt_path)
        loader = wrap_loader(dataloaders, rank=self.global_rank, world_size=self.world_size, seed=self.seed,
                             training=False)
        try:
            self._call_hook("setup", stage)
            if stage == "predict":
                return predict(self, task, loader)
            limit = self.limit_val_batches if stage == "validation" else None
            return evaluate(self, task, loader, stage, limit)
        except BaseException as exc:
            self._handle_exception(exc)
            raise
        finally:
            self._teardown(stage)

    # ================================================================== checkpoints
    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint of everything needed to resume exactly (every rank must call it).

        Taken between optimizer steps of an accumulation window, the partial gradients are not saved.
        """
        _checkpointing.save(self, path)
