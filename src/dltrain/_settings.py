"""`Settings`: the run's settings, every `Trainer` argument checked once, frozen.

`Settings.resolve` turns the ``Trainer(...)`` arguments into settings: Lightning's spellings and defaults resolved
(``precision=16``, ``fast_dev_run``, ``barebones``, ``devices="auto"`` under torchrun), and every value checked,
with an error that names the argument and what to use instead. What needs the device (a precision the device
does not support, ``sync_batchnorm`` off CUDA) is checked by `Settings.check_device` once Fabric has chosen it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from dltrain._trainer_plugins import resolve_plugins
from dltrain.errors import ConfigurationError

__all__ = ["Settings"]

_ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
_STRATEGIES = ("auto", "ddp", "fsdp2", "ddp_find_unused_parameters_true", "single_device")
_PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")
# Lightning's short spellings of the precisions.
_PRECISION_ALIASES: dict[Any, str] = {32: "32-true", "32": "32-true", 16: "16-mixed", "16": "16-mixed",
                                      "bf16": "bf16-mixed", 64: "64-true", "64": "64-true"}


@dataclass(frozen=True)
class Settings:
    """What a run was asked to do (the ``Trainer`` arguments, resolved and checked). See `Trainer` for each."""

    accelerator: str
    devices: Any  # int, "auto", a list of device indices or a "0,1" string
    num_nodes: int
    strategy: Any  # a name, a dltrain.FSDP2 or a lightning.fabric Strategy
    precision: str
    precision_plugin: bool  # ``precision`` is a precision plugin's (in ``plugins``; Fabric checks it)
    max_epochs: int | None
    min_epochs: int
    max_steps: int  # -1: no limit
    min_steps: int
    max_time: str | timedelta | dict[str, int] | None
    limit_train_batches: int | float | None
    limit_val_batches: int | float | None
    limit_test_batches: int | float | None
    limit_predict_batches: int | float | None
    fast_dev_run: int
    overfit_batches: int | float  # 0: off; else both limit_train_batches and limit_val_batches are set to it
    val_check_interval: int | float | None
    check_val_every_n_epoch: int | None
    num_sanity_val_steps: int
    accumulate_grad_batches: int
    gradient_clip_val: float | None
    gradient_clip_algorithm: str
    log_every_n_steps: int
    logger: Any  # True/False, a Logger or loggers
    default_root_dir: str
    enable_progress_bar: bool
    enable_checkpointing: bool
    enable_model_summary: bool
    barebones: bool
    profiler: Any
    deterministic: bool
    benchmark: bool | None
    detect_anomaly: bool
    inference_mode: bool
    use_distributed_sampler: bool
    reload_dataloaders_every_n_epochs: int
    seed: int  # the data order's seed (0 unless given)
    seed_given: bool  # seed everything at construction
    compile: bool | dict[str, Any]
    sync_batchnorm: bool
    on_nonfinite_loss: str
    plugins: tuple[Any, ...]  # what Fabric gets of ``plugins=`` (dltrain._trainer_plugins)
    async_checkpoints: bool  # Lightning's AsyncCheckpointIO plugin was given: ModelCheckpoint(async_save=True)
    enable_autolog_hparams: bool

    def __post_init__(self) -> None:
        """The checks every value must pass, here so that `resolve` and `replace` both run them."""
        _check_choices(self.accelerator, self.strategy, None if self.precision_plugin else self.precision,
                       self.gradient_clip_algorithm, self.on_nonfinite_loss)
        _check_overfit_batches(self.overfit_batches)
        if self.accumulate_grad_batches < 1:
            raise ConfigurationError(f"accumulate_grad_batches={self.accumulate_grad_batches}: use 1 or more")
        if self.log_every_n_steps < 1:
            raise ConfigurationError(f"log_every_n_steps={self.log_every_n_steps}: use 1 or more")
        for name, value in (("max_epochs", self.max_epochs), ("max_steps", self.max_steps)):
            if value is not None and value < -1:  # Lightning's error too
                raise ConfigurationError(f"{name}={value}: use a number of {name[4:]} (0 or more), or -1 for no limit")

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (setting names), checked like the original."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def resolve(
        cls,
        *,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        num_nodes: int | str = "auto",
        strategy: Any = "auto",
        precision: str | int | None = None,
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
        overfit_batches: int | float = 0.0,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        log_every_n_steps: int | None = None,
        logger: Any = None,
        default_root_dir: str | os.PathLike[str] | None = None,
        enable_progress_bar: bool | None = None,
        enable_checkpointing: bool | None = None,
        enable_model_summary: bool | None = None,
        barebones: bool = False,
        profiler: Any = None,
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
        plugins: Any = None,
        enable_autolog_hparams: bool = True,
    ) -> Settings:
        """The settings for these ``Trainer`` arguments (same names and defaults).

        Raises:
            ConfigurationError: a value that cannot work, naming the argument and what to use.
        """
        given_plugins = resolve_plugins(plugins, precision, sync_batchnorm)
        if given_plugins.precision is not None:  # the plugin's (refused with precision= as well)
            precision = given_plugins.precision
        precision = _PRECISION_ALIASES.get(precision, precision) if precision is not None else "32-true"
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
        _check_overfit_batches(overfit_batches)
        if overfit_batches > 1:
            overfit_batches = int(overfit_batches)  # a whole float (4.0) is a number of batches, as in Lightning
        if overfit_batches:  # Lightning's: both limits, whatever fast_dev_run or limit_*_batches said
            limit_train_batches = limit_val_batches = overfit_batches
        env = _env_world()
        if devices == "auto" and env is not None:
            devices = env[0]
        if num_nodes == "auto":
            num_nodes = env[1] if env is not None else 1
        return cls(
            accelerator=accelerator, devices=devices, num_nodes=int(num_nodes), strategy=strategy,
            precision=str(precision), precision_plugin=given_plugins.precision is not None,
            max_epochs=max_epochs, min_epochs=min_epochs or 0,
            max_steps=max_steps if max_steps is not None else -1, min_steps=min_steps or 0, max_time=max_time,
            limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches, limit_predict_batches=limit_predict_batches,
            fast_dev_run=fast_dev_run, overfit_batches=overfit_batches, val_check_interval=val_check_interval,
            check_val_every_n_epoch=check_val_every_n_epoch, num_sanity_val_steps=num_sanity_val_steps,
            accumulate_grad_batches=accumulate_grad_batches, gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm, log_every_n_steps=log_every_n_steps, logger=logger,
            default_root_dir=_root_dir(default_root_dir),
            enable_progress_bar=bool(enable_progress_bar), enable_checkpointing=bool(enable_checkpointing),
            enable_model_summary=bool(enable_model_summary), barebones=barebones, profiler=profiler, deterministic=deterministic,
            benchmark=benchmark, detect_anomaly=detect_anomaly, inference_mode=inference_mode,
            use_distributed_sampler=use_distributed_sampler,
            reload_dataloaders_every_n_epochs=reload_dataloaders_every_n_epochs,
            seed=seed if seed is not None else 0, seed_given=seed is not None, compile=compile,
            sync_batchnorm=given_plugins.sync_batchnorm, on_nonfinite_loss=on_nonfinite_loss,
            plugins=tuple(given_plugins.fabric), async_checkpoints=given_plugins.async_checkpoints,
            enable_autolog_hparams=bool(enable_autolog_hparams),
        )

    def check_device(self, device: torch.device) -> None:
        """What the device Fabric chose cannot run (a precision, SyncBatchNorm off CUDA)."""
        precision = self.precision
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
        if self.sync_batchnorm and device.type != "cuda":
            raise ConfigurationError(
                "sync_batchnorm=True needs CUDA devices (torch's SyncBatchNorm runs on GPUs only); on "
                f"{device.type} leave it off"
            )

    # ------------------------------------------------------------------ what the settings imply
    def count_batches(self, loader: Any, limit: int | float | None) -> float:
        """Batches of ``loader`` a stage runs under ``limit`` (a ``limit_*_batches`` value); ``inf``: unknown."""
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

    def val_check_batch(self, num_training_batches: float) -> float:
        """Validate after every this many training batches (``inf``: at the end of a loader without a length).

        Lightning's rule: an int ``val_check_interval`` is a number of batches (counted over the whole fit when
        ``check_val_every_n_epoch=None``, else within each epoch, where it may not exceed the epoch's batches); a
        fraction is that share of the epoch's batches (at least 1). Only batches whose count is a multiple of it
        are followed by a validation, so ``val_check_interval=0.5`` over 5 batches validates after batches 2 and 4.
        """
        v = 1.0 if self.val_check_interval is None else self.val_check_interval
        if isinstance(v, int) or v > 1.0:
            every = int(v)
            if self.check_val_every_n_epoch is not None and math.isfinite(num_training_batches) and (
                    every > num_training_batches):
                raise ConfigurationError(
                    f"val_check_interval={every} is more than the {int(num_training_batches)} training batches of an "
                    "epoch, so validation would never run: lower it, pass check_val_every_n_epoch=None to count "
                    "batches over the whole fit (as Lightning), or limit_val_batches=0 to switch validation off"
                )
            return float(every)
        if not math.isfinite(num_training_batches):
            if v == 1.0:
                return math.inf
            raise ConfigurationError(
                f"val_check_interval={v} (a fraction of an epoch) needs a training loader with a length; give a "
                "number of batches instead"
            )
        return float(max(int(num_training_batches * v), 1))

    def validates_in_epoch(self, epoch: int) -> bool:
        """Whether ``epoch`` (from 0) is one of those ``check_val_every_n_epoch`` validates in (all when None)."""
        n = self.check_val_every_n_epoch
        return n is None or (epoch + 1) % n == 0


def _check_overfit_batches(value: Any) -> None:
    """``overfit_batches`` as Lightning checks it: a fraction in [0, 1] or a whole number of batches."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value > 1 and value % 1 != 0):
        raise ConfigurationError(
            f"overfit_batches={value!r}: use a fraction of the loaders in [0.0, 1.0] or a whole number of batches "
            "(0: off)")


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
    if precision is not None and precision not in _PRECISIONS:
        raise ConfigurationError(f"unknown precision {precision!r}; use one of {_PRECISIONS}")
    if clip not in ("norm", "value"):
        raise ConfigurationError(f"gradient_clip_algorithm={clip!r}: use 'norm' or 'value'")
    if nonfinite not in ("raise", "skip", "ignore"):
        raise ConfigurationError(f"on_nonfinite_loss={nonfinite!r}: use 'raise', 'skip' or 'ignore'")


def _root_dir(given: str | os.PathLike[str] | None) -> str:
    """Lightning's default: the working directory (runs go to ./lightning_logs/version_<N>/); URLs kept as given."""
    root = os.fspath(given) if given is not None else os.getcwd()
    return root if "://" in root else os.path.normpath(os.path.expanduser(root))


def _env_world() -> tuple[int, int] | None:
    """(local processes, nodes) when started by torchrun/SLURM-like launchers, from their environment."""
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:
        local = int(os.environ["LOCAL_WORLD_SIZE"])
        return local, max(int(os.environ["WORLD_SIZE"]) // max(local, 1), 1)
    return None
