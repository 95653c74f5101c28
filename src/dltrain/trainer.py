"""`Trainer`: the training, validation, test and prediction loops, on Lightning Fabric.

Fabric owns devices, strategies (DDP, FSDP), precision and cluster environments; this module owns the loops.
The loops are written to cost next to nothing per step: hooks are resolved once per stage to the callbacks that
override them, logged values stay on the device until a logging interval, and on a single device in full
precision the step calls the task, ``backward`` and the optimizer directly, exactly as a hand-written loop does.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.plugins.precision import Precision
from lightning.fabric.strategies import DDPStrategy, SingleDeviceStrategy, Strategy
from torch import Tensor

from dltrain import checkpoint as ckpt_io
from dltrain._loaders import wrap_loader
from dltrain._optim import SchedulerConfig, parse_optimizers
from dltrain._results import ResultStore
from dltrain.callbacks.base import Callback, overrides
from dltrain.distributed import Watchdog, isolate_restart_round
from dltrain.errors import CheckpointError, ConfigurationError, DltrainError, StepError
from dltrain.loggers.base import Logger
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

        # Loop state (Lightning's names).
        self.global_step = 0
        self.current_epoch = 0
        self.should_stop = False
        self.stage: str | None = None
        self.callback_metrics: dict[str, Tensor] = {}
        self.logged_metrics: dict[str, float] = {}
        self.progress_bar_metrics: dict[str, float] = {}
        self.num_training_batches: float = float("inf")
        self.num_val_batches: float = float("inf")
        self.num_test_batches: float = float("inf")
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[SchedulerConfig] = []
        self.train_dataloader: Any = None
        self._stepped = False  # whether the last training batch ended with an optimizer step
        self._batch_idx = 0
        self._in_train_loop = False
        self._task: Task | None = None
        self._module: Any = None  # what Fabric returned (wraps DDP/FSDP) — used outside the fast path
        self._optimizer: Any = None
        self._train_results: ResultStore | None = None
        self._recent_losses: list[Tensor] = []  # accelerator path of the non-finite loss check
        self._recent_steps: list[int] = []

    # ================================================================== properties
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

        if callbacks is None:
            result: list[Callback] = []
        elif isinstance(callbacks, Callback):
            result = [callbacks]
        else:
            result = list(callbacks)
        for cb in result:
            if not isinstance(cb, Callback):
                raise ConfigurationError(f"callbacks must be dltrain.Callback instances, got {type(cb).__name__}")
        if progress and not any(type(c).__name__ == "ProgressBar" for c in result):
            from dltrain.callbacks.progress import ProgressBar

            result.append(ProgressBar())
        if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in result):
            result.append(ModelCheckpoint())
        if not checkpointing and any(isinstance(c, ModelCheckpoint) for c in result):
            raise ConfigurationError("enable_checkpointing=False but a ModelCheckpoint is in callbacks; drop one")
        return result

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

    def _hooks(self, name: str) -> list[Any]:
        """Bound ``name`` of the callbacks that override it: dispatch costs nothing for the others."""
        return [getattr(cb, name) for cb in self.callbacks if overrides(cb, name)]

    def _call(self, name: str, *args: Any) -> None:
        for cb in self.callbacks:
            if overrides(cb, name):
                getattr(cb, name)(self, self._task, *args)

    def _attach(self, task: Task, stage: str) -> None:
        if not isinstance(task, Task):
            raise ConfigurationError(f"Trainer needs a dltrain.Task, got {type(task).__name__}")
        self._task = task
        task._trainer = self
        self.stage = stage

    def _setup_task(self, task: Task, with_optimizer: bool) -> None:
        """Place the task (and its optimizer) with Fabric. Done once per Trainer and task."""
        if self._module is not None and self._module_task is task and (self._optimizer or not with_optimizer):
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
            self._module, self._optimizer = self.fabric.setup(task, optimizer)
            self.optimizers = [optimizer]
            self.lr_scheduler_configs = schedulers
        else:
            self._module = self.fabric.setup_module(task)
        self._module_task = task
        forward_module = self._module._forward_module
        precision = self.fabric.strategy.precision
        # The fast path: nothing between the loop and the model that a hand-written loop would not have.
        self._plain = (
            type(precision) is Precision and isinstance(self.fabric.strategy, SingleDeviceStrategy)
        )
        self._plain_precision = type(precision) is Precision
        self._wrapped = forward_module is not task  # DDP / FSDP: steps must go through the wrapper's forward
        self._sharded = self._wrapped and not isinstance(self.fabric.strategy, DDPStrategy)
        self._move_batches = self.device.type != "cpu"
        self._check_loss_on_host = self.device.type == "cpu" or self.on_nonfinite_loss == "skip"

    # ================================================================== step dispatch
    def _zero_loss(self, batch: Any, batch_idx: int, forward_done: bool) -> Tensor:
        """A loss whose gradient is zero for every parameter (for a rank that has nothing to contribute)."""
        task = self._task
        assert task is not None

        def zero(*_: Any) -> Tensor:
            return sum((p.sum() * 0.0 for p in task.parameters() if p.requires_grad), torch.zeros((), device=self.device))

        if forward_done:  # DDP's forward already ran for this step: it now expects one backward
            return zero()
        task.__dict__["_dltrain_zero_step"] = zero
        try:
            return self._through_wrapper("_dltrain_zero_step", batch, batch_idx)
        finally:
            task.__dict__.pop("_dltrain_zero_step", None)

    def _through_wrapper(self, method_name: str, batch: Any, batch_idx: int) -> Any:
        """Call ``task.<method_name>`` through the DDP/FSDP wrapper's forward (gradient sync, parameter gathering).

        The task's ``forward`` is swapped for one call, as Lightning and Fabric do, so that the wrapper's
        ``forward`` ends up in the step method; the swap is undone before the step runs (it may call ``self(x)``).
        """
        task = self._task
        assert task is not None
        method = getattr(task, method_name)

        def redirected(*args: Any, **kwargs: Any) -> Any:
            del task.forward  # type: ignore[method-assign]
            return method(*args, **kwargs)

        task.forward = redirected  # type: ignore[method-assign]
        try:
            return self._module._forward_module(batch, batch_idx)
        finally:
            task.__dict__.pop("forward", None)

    def _run_step(self, method_name: str, batch: Any, batch_idx: int, through_wrapper: bool) -> Any:
        task = self._task
        assert task is not None
        step = partial(self._through_wrapper, method_name) if through_wrapper else getattr(task, method_name)
        if self._plain_precision:
            return step(batch, batch_idx)
        precision = self.fabric.strategy.precision
        with precision.forward_context():
            return step(precision.convert_input(batch), batch_idx)

    def _to_device(self, batch: Any) -> Any:
        return self.fabric.to_device(batch) if self._move_batches else batch

    # ================================================================== fit
    def fit(
        self,
        task: Task,
        train_dataloaders: Iterable[Any],
        val_dataloaders: Iterable[Any] | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Train ``task``; resume from ``ckpt_path`` (a file, or ``"last"``: the newest complete checkpoint).

        Hook order (task hooks run before callback hooks of the same name)::

            setup("fit")                                 callbacks
            on_fit_start                                 task, callbacks
            for each epoch:
                on_train_epoch_start                     task, callbacks
                for each batch:
                    on_after_batch_transfer              task (batch is on the device)
                    on_train_batch_start                 callbacks
                    training_step                        task
                    backward
                    on_before_optimizer_step             task, callbacks  (every accumulate_grad_batches)
                    optimizer step, step-interval LR schedulers
                    on_train_batch_end                   callbacks
                    step values to the loggers           every log_every_n_steps optimizer steps
                    validation when val_check_interval is reached (below)
                validation at the end of the epoch when check_val_every_n_epoch says so:
                    on_validation_epoch_start            task, callbacks
                    validation_step for each batch       task; on_validation_batch_end callbacks
                    on_validation_epoch_end              task; epoch metrics reduced; callbacks; loggers
                on_train_epoch_end                       task; epoch metrics reduced; callbacks; loggers
                epoch-interval LR schedulers
            on_fit_end                                   task, callbacks
            teardown("fit")                              callbacks (also after an exception, after on_exception)

        Validation runs in ``eval()`` mode under ``torch.no_grad()`` and leaves the training RNG stream as it found
        it. Returning ``None`` from ``training_step`` skips that batch: no backward from it (under DDP the rank
        joins the gradient all-reduce with zeros, so the other ranks do not wait for it).
        """
        self._attach(task, "fit")
        train_loader = wrap_loader(
            train_dataloaders, rank=self.global_rank, world_size=self.world_size, seed=self.seed, training=True
        )
        val_loader = (
            None
            if val_dataloaders is None
            else wrap_loader(
                val_dataloaders, rank=self.global_rank, world_size=self.world_size, seed=self.seed, training=False
            )
        )
        self.train_dataloader = train_loader
        self._val_loader = val_loader
        self.num_training_batches = self._num_batches(train_loader, self.limit_train_batches)
        # After the loaders: configure_optimizers may read trainer.estimated_stepping_batches.
        self._setup_task(task, with_optimizer=True)
        if self.max_epochs is None and self.max_steps < 0:
            if not math.isfinite(self.num_training_batches):
                raise ConfigurationError(
                    "the training loader has no length and neither max_epochs nor max_steps is set, so training "
                    "might never stop: pass Trainer(max_steps=...) or Trainer(max_epochs=...)"
                )
            self.max_epochs = 1000
        self._train_results = ResultStore(training=True, trainer=self)
        self._resume_batch = 0
        if ckpt_path is not None:
            self._restore(ckpt_path, train_loader)
        watchdog = Watchdog(self.global_rank, self.world_size, lambda: (self.current_epoch, self._batch_idx,
                                                                        self._in_train_loop))
        self._watchdog = watchdog
        try:
            self._call("setup", "fit")
            if self.is_global_zero:
                for lg in self.loggers:
                    lg.log_hyperparams({**task.hparams, **self._trainer_hparams()})
            watchdog.start()
            task.on_fit_start()
            self._call("on_fit_start")
            self._fit_loop(task, train_loader)
            task.on_fit_end()
            self._call("on_fit_end")
            if self.is_global_zero:
                for lg in self.loggers:
                    lg.finalize("success")
        except BaseException as exc:
            self._handle_exception(exc)
            raise
        finally:
            watchdog.stop()
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
        if self._in_train_loop:
            where += f", batch {self._batch_idx}"
        if isinstance(exc, Exception):
            if hasattr(exc, "add_note"):
                exc.add_note(f"[dltrain] raised on {where}")
            if self.world_size > 1:
                sys.stderr.write(f"[dltrain] {where} failed: {type(exc).__name__}: {exc}\n")
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
        self._in_train_loop = False
        self._call("teardown", stage)
        if self._task is not None:
            self._task._results = None

    @staticmethod
    def _num_batches(loader: Any, limit: int | float | None) -> float:
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

    def _val_every(self) -> int | None:
        """Validate every this many training batches (None: only at epoch ends)."""
        v = self.val_check_interval
        if v is None or self._val_loader is None:
            return None
        if isinstance(v, float) and v <= 1.0:
            if not math.isfinite(self.num_training_batches):
                raise ConfigurationError("val_check_interval as a fraction needs a training loader with a length")
            return max(int(self.num_training_batches * v), 1)
        return int(v)

    def _fit_loop(self, task: Task, loader: Any) -> None:
        while not self.should_stop:
            if self.max_epochs is not None and self.current_epoch >= self.max_epochs:
                break
            if 0 < self.max_steps <= self.global_step:
                break
            self._train_epoch(task, loader)
            if self.should_stop or (0 < self.max_steps <= self.global_step):
                break
            self.current_epoch += 1

    def _check_equal_lengths(self) -> None:
        """Every rank must run as many batches as the others, or DDP hangs: check once per epoch."""
        if self.world_size < 2 or not math.isfinite(self.num_training_batches):
            return
        mine = int(self.num_training_batches) - self._resume_batch
        gathered = self.fabric.all_gather(torch.tensor(mine, device=self.device))
        assert isinstance(gathered, Tensor)
        lengths = gathered.tolist()
        if len(set(lengths)) > 1:
            raise DltrainError(
                f"the ranks have different numbers of training batches this epoch ({dict(enumerate(lengths))}): "
                "DDP would hang at the end of the shortest. Use a plain DataLoader (dltrain distributes it evenly), "
                "dltrain.data.StreamingDataset, or make your sampler give every rank the same count."
            )

    def _train_epoch(self, task: Task, loader: Any) -> None:
        results = self._train_results
        assert results is not None
        task._results = results
        task.train()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.current_epoch)
        self.num_training_batches = self._num_batches(loader, self.limit_train_batches)
        self._check_equal_lengths()
        task.on_train_epoch_start()
        self._call("on_train_epoch_start")

        # Resolved once: per step only the callbacks that override a hook are called.
        batch_start_hooks = self._hooks("on_train_batch_start")
        batch_end_hooks = self._hooks("on_train_batch_end")
        before_opt_hooks = self._hooks("on_before_optimizer_step")
        task_before_opt = task.on_before_optimizer_step
        task_after_transfer = task.on_after_batch_transfer if type(task).on_after_batch_transfer is not \
            Task.on_after_batch_transfer else None
        step_schedulers = [c for c in self.lr_scheduler_configs if c.interval == "step"]
        accumulate = self.accumulate_grad_batches
        optimizer = self.optimizers[0]
        fabric_optimizer = self._optimizer
        plain = self._plain
        wrapped = self._wrapped
        distributed = self.world_size > 1
        clip_val = self.gradient_clip_val
        limit = self.num_training_batches
        log_every = self.log_every_n_steps
        val_every = self._val_every()
        check_nonfinite = self.on_nonfinite_loss != "ignore"
        # On the CPU reading the loss costs no device sync, so it is checked exactly every step; on an accelerator
        # the first bad step is recorded on the device and read at logging intervals (unless the user asked to
        # skip bad steps, which needs the answer before the optimizer step).
        sync_each_step = self._check_loss_on_host

        start = self._resume_batch
        self._resume_batch = 0
        iterator = iter(loader)
        if self._pending_rng is not None:
            # Creating the iterator draws from the RNG (DataLoader seeds): restore the saved state after it.
            ckpt_io.set_rng_state(self._pending_rng)
            self._pending_rng = None
        self._in_train_loop = True
        batch_idx = start - 1
        last_batch = int(limit) - 1 if math.isfinite(limit) else -1
        for batch_idx, batch in enumerate(iterator, start):
            if batch_idx >= limit:
                batch_idx -= 1
                break
            self._batch_idx = batch_idx
            if self._move_batches:
                batch = self.fabric.to_device(batch)
            if task_after_transfer is not None and batch is not None:
                batch = task_after_transfer(batch, 0)
            results.batch = batch
            for hook in batch_start_hooks:
                hook(self, task, batch, batch_idx)

            is_step = (batch_idx + 1) % accumulate == 0 or batch_idx == last_batch
            try:
                if batch is None:
                    # The loader skipped every sample of this batch (on_error="skip"); it still counts as a
                    # batch so that every rank keeps the same number of steps.
                    output = None
                elif plain:
                    output = task.training_step(batch, batch_idx)
                elif distributed and not is_step and wrapped:
                    with self.fabric.no_backward_sync(self._module, enabled=True):
                        output = self._run_step("training_step", batch, batch_idx, True)
                else:
                    output = self._run_step("training_step", batch, batch_idx, wrapped)
            except DltrainError:
                raise
            except Exception as err:
                _raise_if_unused_parameters(err)
                raise StepError(
                    f"training_step failed on batch {batch_idx} (epoch {self.current_epoch}, global step "
                    f"{self.global_step}) with {type(err).__name__}: {err} — the batch was {_describe(batch)}"
                ) from err
            loss = self._extract_loss(output, batch_idx)
            self._stepped = False
            if loss is not None and check_nonfinite and self._is_nonfinite(loss, batch_idx, sync_each_step):
                loss = None  # on_nonfinite_loss="skip": no backward from this batch
            if loss is None and distributed and wrapped:
                # The other ranks wait for this one in the gradient all-reduce: take part with a zero gradient.
                loss = self._zero_loss(batch, batch_idx, forward_done=batch is not None)
            if loss is not None:
                if accumulate > 1:
                    loss = loss / accumulate
                if plain:
                    loss.backward()
                elif distributed and not is_step and wrapped:
                    with self.fabric.no_backward_sync(self._module, enabled=True):
                        self.fabric.backward(loss, model=self._module)
                else:
                    self._backward(loss)
            if is_step:
                task_before_opt(optimizer)
                for hook in before_opt_hooks:
                    hook(self, task, optimizer)
                if clip_val is not None:
                    self._clip(fabric_optimizer)
                if plain:
                    optimizer.step()
                else:
                    fabric_optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                self._stepped = True
                for config in step_schedulers:
                    if self.global_step % config.frequency == 0:
                        self._step_scheduler(config)
            for hook in batch_end_hooks:
                hook(self, task, output, batch, batch_idx)
            # After the batch-end hooks, so that what callbacks log for this step is sent with it.
            if self._stepped and self.global_step % log_every == 0:
                self._log_step(results)
            if val_every is not None and (batch_idx + 1) % val_every == 0 and batch_idx != last_batch:
                self._run_validation(task)
                task._results = results
            if self.should_stop or (0 < self.max_steps <= self.global_step):
                break
        else:
            self._report_exhausted(batch_idx + 1)
        self._in_train_loop = False
        results.batch = None
        self._log_skipped(loader, results, "train")
        self._check_bad_step()
        self._batch_idx = batch_idx + 1

        if self._val_loader is not None and self._validate_this_epoch():
            self._run_validation(task)
        task._results = results
        task.on_train_epoch_end()
        self._epoch_complete = True
        self._epoch_end_callbacks("on_train_epoch_end", results)
        self._epoch_complete = False
        self.should_stop = self._any_rank(self.should_stop)
        for config in self.lr_scheduler_configs:
            if config.interval == "epoch" and (self.current_epoch + 1) % config.frequency == 0:
                self._step_scheduler(config)

    def _epoch_end_callbacks(self, hook: str, results: ResultStore) -> dict[str, Tensor]:
        """Reduce the epoch's values, run the callbacks' epoch-end hook, then send everything to the loggers.

        Callbacks see the epoch aggregates (in ``callback_metrics``) and what they log in the hook is reported with
        the same epoch, as in Lightning.
        """
        metrics, bar = results.read_epoch()
        self.callback_metrics.update(metrics)
        self._call(hook)
        more, more_bar = results.read_epoch()
        metrics.update(more)
        bar.update(more_bar)
        self._publish(metrics, bar)
        return metrics

    @staticmethod
    def _log_skipped(loader: Any, results: ResultStore, stage: str) -> None:
        """Bad samples a loader skipped (``on_error="skip"``) this epoch, summed over ranks, as a metric."""
        report = getattr(loader, "epoch_report", None)
        skipped = report()["skipped"] if report is not None else 0
        if skipped:
            results.log(f"data/{stage}_skipped_samples", float(skipped), False, True, False, False, 1, "sum")

    def _report_exhausted(self, batches: int) -> None:
        if self.world_size > 1 and not math.isfinite(self.num_training_batches):
            self._watchdog.report_exhausted(self.current_epoch, batches)

    def _validate_this_epoch(self) -> bool:
        n = self.check_val_every_n_epoch
        return n is not None and (self.current_epoch + 1) % n == 0

    def _any_rank(self, flag: bool) -> bool:
        if self.world_size < 2:
            return flag
        total = self.fabric.all_reduce(torch.tensor(float(flag), device=self.device), reduce_op="sum")
        assert isinstance(total, Tensor)
        return bool(total > 0)

    def _extract_loss(self, output: Any, batch_idx: int) -> Tensor | None:
        if output is None:
            return None
        loss = output
        if isinstance(output, Mapping):
            if "loss" not in output:
                raise StepError(
                    f"training_step returned a dict without a 'loss' entry on batch {batch_idx} (keys: "
                    f"{sorted(output)}); return {{'loss': loss, ...}}, a scalar tensor, or None to skip the batch"
                )
            loss = output["loss"]
        if not isinstance(loss, Tensor):
            raise StepError(
                f"training_step returned {type(loss).__name__} on batch {batch_idx}; return a scalar loss tensor, "
                "a dict with 'loss', or None to skip the batch"
            )
        if loss.ndim != 0 and loss.numel() != 1:
            raise StepError(
                f"training_step returned a loss of shape {tuple(loss.shape)} on batch {batch_idx}; the loss must be "
                "a scalar (reduce it, e.g. loss.mean())"
            )
        if not loss.requires_grad:
            raise StepError(
                f"the loss returned on batch {batch_idx} does not require grad (it was computed without the "
                "model's parameters, under torch.no_grad(), or detached)"
            )
        return loss

    def _is_nonfinite(self, loss: Tensor, batch_idx: int, sync_each_step: bool) -> bool:
        if sync_each_step:
            # .item() on a CPU scalar costs under a microsecond; torch.isfinite would cost about 15.
            value = loss.item()
            if math.isfinite(value):
                return False
            if self.on_nonfinite_loss == "skip":
                self._skipped_nonfinite = getattr(self, "_skipped_nonfinite", 0) + 1
                return True
            raise StepError(
                f"the loss is {value} at global step {self.global_step} (epoch {self.current_epoch}, batch "
                f"{batch_idx}, rank {self.global_rank}). Lower the learning rate, clip gradients "
                "(gradient_clip_val), check the data, or pass Trainer(on_nonfinite_loss='skip')."
            )
        # On an accelerator, keep the losses (no kernel, no sync) and look at them when logging; a long logging
        # interval is checked every 4096 batches so that memory stays bounded.
        self._recent_losses.append(loss.detach())
        self._recent_steps.append(self.global_step)
        if len(self._recent_losses) >= 4096:
            self._check_bad_step()
        return False

    def _check_bad_step(self) -> None:
        if not self._recent_losses:
            return
        finite = torch.isfinite(torch.stack(self._recent_losses).float())
        steps = self._recent_steps
        self._recent_losses, self._recent_steps = [], []
        if not bool(finite.all()):
            step = steps[int((~finite).nonzero()[0, 0])]
            raise StepError(
                f"the loss became NaN or infinite at global step {step} (rank {self.global_rank}). Lower the "
                "learning rate, clip gradients, check the data, or pass Trainer(on_nonfinite_loss='skip')."
            )

    def _backward(self, loss: Tensor) -> None:
        try:
            self.fabric.backward(loss, model=self._module)
        except RuntimeError as err:
            _raise_if_unused_parameters(err)
            raise

    def _clip(self, optimizer: Any) -> None:
        if self.gradient_clip_algorithm == "norm":
            self.fabric.clip_gradients(self._module, optimizer, max_norm=self.gradient_clip_val)
        else:
            self.fabric.clip_gradients(self._module, optimizer, clip_val=self.gradient_clip_val)

    def _step_scheduler(self, config: SchedulerConfig) -> None:
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
            config.scheduler.step(float(value))
        else:
            config.scheduler.step()

    # ================================================================== logging
    def _log_step(self, results: ResultStore) -> None:
        self._check_bad_step()
        values, bar = results.read_step()
        if values:
            self._publish(values, bar)

    def _publish(self, values: dict[str, Tensor], bar: dict[str, Tensor]) -> None:
        floats = {k: float(v) for k, v in values.items()}
        self.callback_metrics.update(values)
        self.logged_metrics.update(floats)
        self.progress_bar_metrics.update({k: floats[k] for k in bar})
        if floats and self.is_global_zero:
            metrics = {**floats, "epoch": float(self.current_epoch)}
            for lg in self.loggers:
                lg.log_metrics(metrics, self.global_step)

    # ================================================================== evaluation
    def _run_validation(self, task: Task) -> None:
        assert self._val_loader is not None
        rng = ckpt_io.rng_state()
        was_training = task.training
        try:
            self._evaluate(task, self._val_loader, "validation", self.limit_val_batches)
        finally:
            ckpt_io.set_rng_state(rng)
            task.train(was_training)

    def _evaluate(self, task: Task, loader: Any, stage: str, limit: int | float | None) -> dict[str, float]:
        step_name = {"validation": "validation_step", "test": "test_step"}[stage]
        if type(task).__dict__.get(step_name) is None and getattr(type(task), step_name) is getattr(Task, step_name):
            raise ConfigurationError(f"{type(task).__name__} has no {step_name}(batch, batch_idx) to run {stage} with")
        results = ResultStore(training=False, trainer=self)
        task._results = results
        task.eval()
        n = self._num_batches(loader, limit)
        if stage == "validation":
            self.num_val_batches = n
        else:
            self.num_test_batches = n
        getattr(task, f"on_{stage}_epoch_start")()
        self._call(f"on_{stage}_epoch_start")
        batch_end = self._hooks(f"on_{stage}_batch_end")
        # Evaluation must not run collectives per step (ranks may have different numbers of batches): DDP's
        # forward would, so steps call the task directly; only sharded models (FSDP) go through the wrapper.
        through = self._sharded
        with torch.no_grad():
            for batch_idx, batch in enumerate(loader):
                if batch_idx >= n:
                    break
                batch = self._to_device(batch)
                batch = task.on_after_batch_transfer(batch, 0)
                results.batch = batch
                try:
                    output = self._run_step(step_name, batch, batch_idx, through)
                except DltrainError:
                    raise
                except Exception as err:
                    raise StepError(
                        f"{step_name} failed on batch {batch_idx} with {type(err).__name__}: {err} — the batch was "
                        f"{_describe(batch)}"
                    ) from err
                for hook in batch_end:
                    hook(self, task, output, batch, batch_idx)
        results.batch = None
        self._log_skipped(loader, results, stage)
        getattr(task, f"on_{stage}_epoch_end")()
        metrics = self._epoch_end_callbacks(f"on_{stage}_epoch_end", results)
        return {k: float(v) for k, v in metrics.items()}

    def validate(self, task: Task, dataloaders: Iterable[Any], ckpt_path: str | None = None) -> dict[str, float]:
        """Run the validation loop once; returns the epoch metrics (reduced over all ranks)."""
        return self._eval_stage(task, dataloaders, "validation", ckpt_path)

    def test(self, task: Task, dataloaders: Iterable[Any], ckpt_path: str | None = None) -> dict[str, float]:
        """Run the test loop once; returns the epoch metrics (reduced over all ranks)."""
        return self._eval_stage(task, dataloaders, "test", ckpt_path)

    def _eval_stage(self, task: Task, dataloaders: Any, stage: str, ckpt_path: str | None) -> dict[str, float]:
        self._attach(task, stage)
        self._setup_task(task, with_optimizer=False)
        if ckpt_path is not None:
            self._load_weights_only(ckpt_path)
        loader = wrap_loader(dataloaders, rank=self.global_rank, world_size=self.world_size, seed=self.seed,
                             training=False)
        limit = self.limit_val_batches if stage == "validation" else None
        try:
            self._call("setup", stage)
            return self._evaluate(task, loader, stage, limit)
        except BaseException as exc:
            self._handle_exception(exc)
            raise
        finally:
            self._teardown(stage)

    def predict(self, task: Task, dataloaders: Iterable[Any], ckpt_path: str | None = None) -> list[Any]:
        """Run ``predict_step`` on every batch; returns this rank's outputs, one per batch, in order."""
        self._attach(task, "predict")
        self._setup_task(task, with_optimizer=False)
        if ckpt_path is not None:
            self._load_weights_only(ckpt_path)
        loader = wrap_loader(dataloaders, rank=self.global_rank, world_size=self.world_size, seed=self.seed,
                             training=False)
        outputs = []
        task.eval()
        batch_end = self._hooks("on_predict_batch_end")
        try:
            self._call("setup", "predict")
            with torch.no_grad():
                for batch_idx, batch in enumerate(loader):
                    batch = task.on_after_batch_transfer(self._to_device(batch), 0)
                    out = self._run_step("predict_step", batch, batch_idx, self._sharded)
                    for hook in batch_end:
                        hook(self, task, out, batch, batch_idx)
                    outputs.append(out)
        except BaseException as exc:
            self._handle_exception(exc)
            raise
        finally:
            self._teardown("predict")
        return outputs

    # ================================================================== checkpoints
    def save_checkpoint(self, path: str | os.PathLike[str], *, epoch_end: bool = False) -> None:
        """Write a checkpoint of everything needed to resume exactly (every rank must call it).

        ``epoch_end=True`` marks a checkpoint taken after the epoch's last batch, so a resume starts the next
        epoch. Taken between optimizer steps of an accumulation window, the partial gradients are not saved.
        """
        task = self._task
        if task is None:
            raise DltrainError("save_checkpoint() needs a task: call it during or after fit/validate/test")
        loader = self.train_dataloader
        rank_state: dict[str, Any] = {"rng": ckpt_io.rng_state()}
        if loader is not None and hasattr(loader, "state_dict"):
            rank_state["train_loader"] = loader.state_dict()
        ranks = self._gather_objects(rank_state)
        complete = epoch_end or getattr(self, "_epoch_complete", False)
        checkpoint: dict[str, Any] = {
            "format": ckpt_io.FORMAT_VERSION,
            "dltrain_version": _version(),
            "task_class": f"{type(task).__module__}.{type(task).__qualname__}",
            "hparams": ckpt_io.plain_hparams(task.hparams),
            "loops": {
                "global_step": self.global_step,
                "epoch": self.current_epoch,
                "batches_in_epoch": self._batch_idx + 1 if self._in_train_loop else self._batch_idx,
                "epoch_complete": complete,
            },
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
            "loggers": [lg.state_dict() for lg in self.loggers],
            "train_metrics": self._train_results.state_dict() if self._train_results is not None else {},
            "ranks": ranks,
            "world_size": self.world_size,
        }
        if self.optimizers:
            checkpoint["lr_schedulers"] = [c.scheduler.state_dict() for c in self.lr_scheduler_configs]
            checkpoint["precision"] = self.fabric.strategy.precision.state_dict()
        task.on_save_checkpoint(checkpoint)
        for cb in self.callbacks:
            if overrides(cb, "on_save_checkpoint"):
                cb.on_save_checkpoint(self, task, checkpoint)
        model_state = self.fabric.strategy.get_module_state_dict(self._module)
        checkpoint["state_dict"] = model_state
        if self.optimizers:
            checkpoint["optimizer"] = self.fabric.strategy.get_optimizer_state(self._optimizer)
        if self.is_global_zero:
            ckpt_io.save_atomic(checkpoint, path)
            for lg in self.loggers:
                lg.save()
        self.fabric.barrier()

    def _gather_objects(self, obj: Any) -> list[Any]:
        if self.world_size < 2:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def _resolve_ckpt(self, ckpt_path: str | os.PathLike[str]) -> Path | None:
        if str(ckpt_path) != "last":
            return Path(ckpt_path)
        cb = self.checkpoint_callback
        folder = cb.dirpath if cb is not None and cb.dirpath is not None else Path(self.default_root_dir) / "checkpoints"
        found = ckpt_io.find_last(folder)
        if found is None and self.is_global_zero:
            sys.stderr.write(f"[dltrain] ckpt_path='last': no complete checkpoint in {folder}; starting from scratch\n")
        return found

    def _load_weights_only(self, ckpt_path: str) -> None:
        path = self._resolve_ckpt(ckpt_path)
        if path is None:
            raise CheckpointError(f"ckpt_path={ckpt_path!r}: no checkpoint found")
        checkpoint = ckpt_io.load(path)
        ckpt_io.check_state_dict(self._task, checkpoint["state_dict"], str(path))  # type: ignore[arg-type]
        self.fabric.strategy.load_module_state_dict(self._module, checkpoint["state_dict"])

    def _restore(self, ckpt_path: str | os.PathLike[str], train_loader: Any) -> None:
        self._pending_rng = None
        path = self._resolve_ckpt(ckpt_path)
        if path is None:
            return
        checkpoint = ckpt_io.load(path)
        task = self._task
        assert task is not None
        ckpt_io.check_state_dict(task, checkpoint["state_dict"], str(path))
        self.fabric.strategy.load_module_state_dict(self._module, checkpoint["state_dict"])
        if "optimizer" in checkpoint:
            self._optimizer.load_state_dict(checkpoint["optimizer"])
        for config, state in zip(self.lr_scheduler_configs, checkpoint.get("lr_schedulers", [])):
            config.scheduler.load_state_dict(state)
        if checkpoint.get("precision"):
            self.fabric.strategy.precision.load_state_dict(checkpoint["precision"])
        loops = checkpoint["loops"]
        self.global_step = loops["global_step"]
        self.current_epoch = loops["epoch"]
        states = checkpoint.get("callbacks", {})
        for cb in self.callbacks:
            if cb.state_key in states:
                cb.load_state_dict(states[cb.state_key])
        if self.is_global_zero:
            for lg, state in zip(self.loggers, checkpoint.get("loggers", [])):
                lg.load_state_dict(state)
        task.on_load_checkpoint(checkpoint)
        for cb in self.callbacks:
            if overrides(cb, "on_load_checkpoint"):
                cb.on_load_checkpoint(self, task, checkpoint)
        ranks = checkpoint.get("ranks", [])
        same_world = checkpoint.get("world_size") == self.world_size
        mine = ranks[self.global_rank] if same_world and self.global_rank < len(ranks) else None
        if loops["epoch_complete"]:
            self.current_epoch += 1
            self._resume_batch = 0
        else:
            self._resume_batch = loops["batches_in_epoch"]
            if self._train_results is not None:
                self._train_results.load_state_dict(checkpoint.get("train_metrics", {}))
            loader_state = (mine or (ranks[0] if ranks else {})).get("train_loader")
            if loader_state is not None and hasattr(train_loader, "load_state_dict"):
                train_loader.load_state_dict(loader_state)
                # With another world size the loader re-splits what is left; it knows which batch is next.
                self._resume_batch = int(train_loader.state_dict().get("batches", self._resume_batch))
            elif self._resume_batch:
                raise CheckpointError(
                    f"checkpoint {str(path)!r} was taken in the middle of an epoch, but the training loader "
                    f"({type(train_loader).__name__}) cannot restore its position (no load_state_dict). Use a "
                    "map-style DataLoader or dltrain.data.StreamingDataset, or checkpoint at epoch ends only."
                )
        # RNG states are per rank; with another world size there is no matching state: keep the fresh seed.
        self._pending_rng = mine["rng"] if mine is not None else None

    _pending_rng: dict[str, Any] | None = None
    _epoch_complete = False
    _resume_batch = 0
    _module_task: Task | None = None
    _val_loader: Any = None
    _watchdog: Any = None
    _plain = False
    _plain_precision = True
    _wrapped = False
    _sharded = False
    _move_batches = False
    _check_loss_on_host = True


def _raise_if_unused_parameters(err: BaseException) -> None:
    """DDP reports parameters without a gradient at the next forward, in terms of its own arguments."""
    if "find_unused_parameters" in str(err) or "did not receive grad" in str(err):
        raise StepError(
            "some parameters got no gradient in the previous step, which DDP does not allow by default (looking "
            "for them costs speed). Use them in the loss, freeze them (requires_grad=False), or pass "
            "strategy='ddp_find_unused_parameters_true' (or DDPStrategy(find_unused_parameters=True)). "
            f"Original error: {str(err)[:300]}"
        ) from err


def _describe(batch: Any) -> str:
    if isinstance(batch, Tensor):
        return f"Tensor{tuple(batch.shape)}"
    if isinstance(batch, (list, tuple)):
        return f"{type(batch).__name__}[{', '.join(_describe(b) for b in batch[:4])}]"
    if isinstance(batch, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in list(batch.items())[:6]) + "}"
    return type(batch).__name__


def _version() -> str:
    from dltrain import __version__

    return __version__

