"""`ThroughputMonitor`: samples/s, tokens/s, steps/s, model FLOPs utilisation and the time spent on data."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from dltrain._batch import batch_size_of
from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from torch.utils.flop_counter import FlopCounterMode

    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["ThroughputMonitor", "device_peak_flops"]

PREFIX = "throughput/"


class ThroughputMonitor(Callback):
    """Measure training speed, how close it is to the device's limit, and how much is lost waiting for data.

    Two timestamps per batch: ``on_train_batch_start`` (the batch has arrived) and ``on_train_batch_end`` (its
    step is done). The time from one batch's end to the next batch's start is *data wait*: fetching the batch
    from the loader, moving it to the device, plus whatever runs between batches (callbacks called after this one,
    such as checkpointing). Validation runs during training are excluded from every measure.

    Logged with ``task.log(..., on_step=True)`` on the optimizer steps the Trainer sends to the loggers (every
    ``log_every_n_steps``), over the last ``window`` batches:

    - ``throughput/samples_per_sec`` (this rank; ``throughput/global_samples_per_sec`` = that x world size when
      distributed, assuming ranks run in lockstep as DDP does),
    - ``throughput/tokens_per_sec`` (and ``global_tokens_per_sec``) when the task defines
      ``tokens_per_batch(batch) -> int``,
    - ``throughput/flops_per_sec`` (model FLOPs of forward and backward, this rank) and ``throughput/mfu`` (model
      FLOPs utilisation: that / the device's peak) when the FLOPs are known (below),
    - ``throughput/batches_per_sec``, ``throughput/steps_per_sec`` (optimizer steps),
    - ``throughput/data_wait_fraction``: data wait / wall time, from 0 (never waits) to 1. Above ~0.1 the input
      pipeline is the bottleneck: add loader workers, decode less on the fly, or move augmentation to the device.

    and once per epoch (``on_epoch=True``, averaged over ranks) the same over the whole epoch, named
    ``throughput/epoch_<measure>``. Per step it stores a few floats into preallocated slots; nothing else.

    FLOPs per batch come from the task, when it defines ``flops_per_batch(batch) -> int`` (forward and backward
    of this rank's batch; an int attribute ``flops_per_batch``, Lightning's convention, works too), or, with
    ``measure_flops=True``, are counted once on the first training batch with
    ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions and attention; that batch runs
    slower under the counter and eagerly under ``torch.compile``) and scaled by each batch's sample count after.
    The peak is ``peak_flops``, or looked up by ``torch.cuda.get_device_name`` and the precision in a table of
    dense peaks (:func:`device_peak_flops`); on a CPU, or a GPU not in the table, pass ``peak_flops``.

    Args:
        window: number of recent batches the step values are measured over.
        batch_size_fn: ``batch -> number of samples``; default: the first dimension of the first tensor found
            in the batch (tensors, then inside dicts/lists/tuples in order).
        prog_bar: also show ``samples_per_sec`` (or ``batches_per_sec``), ``tokens_per_sec`` and ``mfu`` on the
            progress bar.
        peak_flops: the device's peak FLOP/s for the run's precision (overrides the table).
        measure_flops: count the FLOPs of the first training batch when the task does not say them.
        length_fn: ``batch -> number of items`` (tokens): Lightning's name for what the task's
            ``tokens_per_batch(batch)`` says; when given, it is used instead.

    Example:
        >>> monitor = ThroughputMonitor(window=100, batch_size_fn=lambda b: len(b["input_ids"]))
        >>> # Trainer(callbacks=[monitor]); watch "throughput/data_wait_fraction"
    """

    def __init__(
        self,
        window: int = 50,
        batch_size_fn: Callable[[Any], int] | None = None,
        prog_bar: bool = False,
        peak_flops: float | None = None,
        measure_flops: bool = False,
        length_fn: Callable[[Any], int] | None = None,
    ) -> None:
        if window < 1:
            raise ConfigurationError(f"ThroughputMonitor(window={window}): use 1 or more")
        if peak_flops is not None and not peak_flops > 0:
            raise ConfigurationError(f"ThroughputMonitor(peak_flops={peak_flops}): use the device's FLOP/s, > 0")
        self.window = window
        self.batch_size_fn = batch_size_fn or batch_size_of
        self.prog_bar = prog_bar
        self.peak_flops = peak_flops
        self.measure_flops = measure_flops
        self.length_fn = length_fn
        # Set at fit start from the task: per-batch counts, or None when not known (nothing stored per step then).
        self._tokens_fn: Callable[[Any], int] | None = None
        self._flops_fn: Callable[[Any], float] | None = None
        self._peak: float | None = None  # the peak MFU is measured against
        self.flops_per_sample: float | None = None  # measured on the first batch (measure_flops=True)
        self._counter: FlopCounterMode | None = None
        size = window + 1  # slot 0 of a window is its starting point
        # Cumulative values since the epoch start, at the end of recent batches (ring buffers, preallocated).
        self._t = [0.0] * size
        self._wait = [0.0] * size
        self._samples = [0] * size
        self._tokens = [0] * size
        self._flops = [0.0] * size
        self._steps = [0] * size
        self._size = size
        self._reset(0.0, 0)

    def _reset(self, now: float, step: int) -> None:
        self._n = 0  # batches ended this epoch; entry i lives in slot i % size, entry 0 is the epoch start
        self._t[0] = now
        self._wait[0] = 0.0
        self._samples[0] = 0
        self._tokens[0] = 0
        self._flops[0] = 0.0
        self._steps[0] = step
        self._epoch_t0 = now
        self._epoch_step0 = step
        self._cum_wait = 0.0
        self._cum_samples = 0
        self._cum_tokens = 0
        self._cum_flops = 0.0
        self._prev_end = now
        self._paused = 0.0
        self._pause_start: float | None = None
        self._epoch_logged = False

    # ------------------------------------------------------------------ what the task says
    @override
    def on_fit_start(self, trainer: TrainerView, task: Task) -> None:
        self._tokens_fn = self.length_fn or _per_batch(task, "tokens_per_batch")  # type: ignore[assignment]
        self._flops_fn = _per_batch(task, "flops_per_batch")
        knows_flops = self._flops_fn is not None or self.measure_flops
        if not knows_flops:
            if self.peak_flops is not None:
                raise ConfigurationError(
                    f"ThroughputMonitor(peak_flops=...) but {type(task).__name__} does not say its FLOPs: define "
                    "flops_per_batch(batch) -> int on the task, or pass ThroughputMonitor(measure_flops=True)"
                )
            return
        self._peak = self.peak_flops or device_peak_flops(trainer.device, str(trainer.precision))
        if self._peak is None:
            name = torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else trainer.device.type
            raise ConfigurationError(
                f"ThroughputMonitor cannot compute MFU: the peak FLOP/s of {name!r} at precision "
                f"{trainer.precision!r} is not in dltrain's table; pass ThroughputMonitor(peak_flops=...) (FLOP/s "
                "of one device, dense, for that precision, from its datasheet)"
            )

    # ------------------------------------------------------------------ timing hooks
    @override
    def on_train_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        # The first batch's wait is measured from here: creating the loader iterator (worker start-up) is data
        # wait the user pays every epoch.
        self._reset(perf_counter(), trainer.global_step)

    @override
    def on_train_batch_start(self, trainer: TrainerView, task: Task, batch: Any, batch_idx: int) -> None:
        now = perf_counter() - self._paused
        self._cum_wait += now - self._prev_end
        if self.measure_flops and self._flops_fn is None and self.flops_per_sample is None:
            from torch.utils.flop_counter import FlopCounterMode

            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()  # left in on_train_batch_end: forward, backward and the optimizer step

    @override
    def on_train_batch_end(
        self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._counter is not None:
            self._stop_counting(batch)
        now = perf_counter() - self._paused
        samples = self.batch_size_fn(batch)
        self._cum_samples += samples
        if self._tokens_fn is not None:
            self._cum_tokens += self._tokens_fn(batch)
        if self._flops_fn is not None:
            self._cum_flops += self._flops_fn(batch)
        elif self.flops_per_sample is not None:
            self._cum_flops += self.flops_per_sample * samples
        self._n += 1
        i = self._n % self._size
        self._t[i] = now
        self._wait[i] = self._cum_wait
        self._samples[i] = self._cum_samples
        self._tokens[i] = self._cum_tokens
        self._flops[i] = self._cum_flops
        self._steps[i] = trainer.global_step
        self._prev_end = now
        # The epoch summary is logged at the last batch when the epoch length is known, so that it is part of
        # this epoch's aggregates whatever the Trainer does after the loop; otherwise at the epoch end.
        if batch_idx + 1 == trainer.num_training_batches:
            self._log_epoch(trainer, task)

    def _stop_counting(self, batch: Any) -> None:
        counter, self._counter = self._counter, None
        assert counter is not None
        counter.__exit__(None, None, None)
        flops, samples = counter.get_total_flops(), self.batch_size_fn(batch)
        if flops <= 0 or samples <= 0:
            self.measure_flops = False  # nothing to scale: no MFU rather than a wrong one
            warnings.warn(
                f"ThroughputMonitor(measure_flops=True) counted {flops} FLOPs over {samples} samples on the first "
                "batch (FlopCounterMode counts matrix products, convolutions and attention only): no MFU. Define "
                "flops_per_batch(batch) on the task instead", UserWarning, stacklevel=2,
            )
            return
        self.flops_per_sample = flops / samples

    @override
    def on_exception(self, trainer: TrainerView, task: Task, exception: BaseException) -> None:
        if self._counter is not None:  # the first batch failed while counting: leave the dispatch mode
            self._counter.__exit__(None, None, None)
            self._counter = None

    @override
    def on_validation_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        self._pause_start = perf_counter()

    @override
    def on_validation_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        if self._pause_start is not None:
            self._paused += perf_counter() - self._pause_start
            self._pause_start = None

    # ------------------------------------------------------------------ reporting
    @override
    def on_before_optimizer_step(
        self, trainer: TrainerView, task: Task, optimizer: torch.optim.Optimizer
    ) -> None:
        # Runs just before the step that brings global_step to global_step + 1; the Trainer sends step values to
        # the loggers right after the steps where that is a multiple of log_every_n_steps. The window ends at the
        # previous batch's end (the current batch is not done yet).
        if (trainer.global_step + 1) % max(1, trainer.log_every_n_steps) != 0 or self._n == 0:
            return
        newest = self._n
        oldest = max(0, newest - self.window)
        a, b = oldest % self._size, newest % self._size
        values = _rates_from(
            _Counts(self._t[b] - self._t[a], self._wait[b] - self._wait[a], self._samples[b] - self._samples[a],
                    self._tokens[b] - self._tokens[a], self._flops[b] - self._flops[a], newest - oldest,
                    self._steps[b] - self._steps[a]),
            trainer.data_parallel_size, self._peak,
        )
        for name, value in values.items():
            task.log(
                PREFIX + name, value, on_step=True, on_epoch=False, prog_bar=self.prog_bar and name in _BAR
            )

    @override
    def on_train_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        self._log_epoch(trainer, task)

    def _log_epoch(self, trainer: TrainerView, task: Task) -> None:
        if self._epoch_logged or self._n == 0:
            return
        self._epoch_logged = True
        b = self._n % self._size
        # Over the whole epoch: from the epoch start (kept apart, the ring's slot 0 is reused) to the last batch.
        counts = _Counts(self._t[b] - self._epoch_t0, self._wait[b], self._samples[b], self._tokens[b],
                         self._flops[b], self._n, self._steps[b] - self._epoch_step0)
        for name, value in _rates_from(counts, trainer.data_parallel_size, self._peak).items():
            task.log(PREFIX + "epoch_" + name, value, on_step=False, on_epoch=True)


_BAR = ("samples_per_sec", "batches_per_sec", "tokens_per_sec", "mfu")


def _per_batch(task: Task, name: str) -> Callable[[Any], float] | None:
    """The task's ``name(batch)`` method, or a constant for an int attribute of that name; None without either."""
    value = getattr(task, name, None)
    if value is None:
        return None
    if callable(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return lambda batch: value
    raise ConfigurationError(f"{type(task).__name__}.{name} must be a method (batch -> int) or a number")


@dataclass(slots=True)
class _Counts:
    """What a stretch of batches did: wall time, data wait, samples, tokens, FLOPs, batches, optimizer steps."""

    dt: float
    wait: float
    samples: int
    tokens: int
    flops: float
    batches: int
    steps: int


def _rates_from(c: _Counts, replicas: int, peak: float | None) -> dict[str, float]:
    """Rates of this rank; the global ones count each data-parallel replica once.

    Tensor-parallel peers share their samples, so they count as one replica.
    """
    if c.dt <= 0:
        return {}
    values: dict[str, float] = {}
    if c.samples:
        values["samples_per_sec"] = c.samples / c.dt
        if replicas > 1:
            values["global_samples_per_sec"] = c.samples * replicas / c.dt
    if c.tokens:
        values["tokens_per_sec"] = c.tokens / c.dt
        if replicas > 1:
            values["global_tokens_per_sec"] = c.tokens * replicas / c.dt
    if c.flops:
        values["flops_per_sec"] = c.flops / c.dt
        if peak:
            values["mfu"] = c.flops / c.dt / peak
    values["batches_per_sec"] = c.batches / c.dt
    values["steps_per_sec"] = c.steps / c.dt
    values["data_wait_fraction"] = min(max(c.wait / c.dt, 0.0), 1.0)
    return values


# Dense peak throughput of one GPU, in TFLOP/s, per compute type: (name pattern, bf16, fp16, tf32, fp32). Tensor-core
# figures without structured sparsity (NVIDIA's datasheets print the sparse figure, twice these, with an asterisk).
# Sources: the NVIDIA datasheets of each card: H100 and H200 ("NVIDIA H100 Tensor Core GPU" datasheet, SXM and PCIe
# columns; "NVIDIA H200 Tensor Core GPU" datasheet, SXM and NVL columns), A100 ("NVIDIA A100 Tensor Core GPU"
# datasheet, the same for 40 and 80 GB, SXM and PCIe), A10, L4 and L40S (their datasheets), V100 ("NVIDIA V100
# Tensor Core GPU" datasheet: SXM2 and PCIe), T4 ("NVIDIA T4" datasheet). V100 and T4 have no bfloat16 units: None.
# Checked in order: the first pattern found in torch.cuda.get_device_name() wins (variants before the base name).
_PEAKS_TFLOPS: tuple[tuple[str, float | None, float, float | None, float], ...] = (
    (r"H200 NVL", 835.5, 835.5, 417.5, 60.0),
    (r"H200", 989.5, 989.5, 494.5, 67.0),  # SXM ("NVIDIA H200")
    (r"H100 PCIe", 756.5, 756.5, 378.0, 51.0),
    (r"H100", 989.5, 989.5, 494.5, 67.0),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (r"A100", 312.0, 312.0, 156.0, 19.5),
    (r"L40S", 362.05, 362.05, 183.0, 91.6),
    (r"\bL4\b", 121.0, 121.0, 60.0, 30.3),
    (r"\bA10\b", 125.0, 125.0, 62.5, 31.2),
    (r"V100.*PCIE", None, 112.0, None, 14.0),
    (r"V100", None, 125.0, None, 15.7),
    (r"\bT4\b", None, 65.0, None, 8.1),
)


def device_peak_flops(device: torch.device | str, precision: str = "32-true") -> float | None:
    """Dense peak FLOP/s of one ``device`` for a Trainer ``precision``, from dltrain's table of NVIDIA GPUs.

    ``"bf16-*"`` is the bfloat16 tensor-core peak, ``"16-*"`` float16's, ``"32-true"`` TF32's when float32 matrix
    products may use TF32 (``torch.get_float32_matmul_precision() != "highest"``), else float32's. ``None`` for a
    CPU, MPS, a GPU not in the table, or a precision the GPU has no units for (pass the figure yourself then).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    row = next((r for r in _PEAKS_TFLOPS if re.search(r[0], name, flags=re.IGNORECASE)), None)
    if row is None:
        return None
    _, bf16, fp16, tf32, fp32 = row
    if precision.startswith("bf16"):
        tflops = bf16
    elif precision.startswith("16"):
        tflops = fp16
    elif torch.get_float32_matmul_precision() != "highest" and tf32 is not None:
        tflops = tf32
    else:
        tflops = fp32
    return None if tflops is None else tflops * 1e12
