"""The evaluation and prediction loops, on the same batch path as training (``dltrain.batch_path.BatchPath``).

Each evaluation loader is run in turn; with several, steps and batch hooks get a ``dataloader_idx`` argument and
logged names a ``/dataloader_idx_<i>`` suffix, as in Lightning. Metrics are epoch aggregates reduced over every
rank (weighted by batch sizes), so distributed evaluation is exact.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import torch

from dltrain._hooks import overrides
from dltrain._logged_values import LoggedValues
from dltrain.batch_path import BatchPath
from dltrain.errors import ConfigurationError
from dltrain.task import Task

if TYPE_CHECKING:
    from dltrain.trainer import Trainer

__all__ = ["evaluate", "predict"]


def _grad_mode(trainer: Trainer) -> contextlib.AbstractContextManager[Any]:
    # FSDP2 keeps its all-gather buffers between steps: made under inference mode, training could not write them
    # again ("Inplace update to inference tensor"), so sharded models evaluate under no_grad (as Lightning does).
    use_inference = trainer.inference_mode and not trainer._sharded_in_place
    return torch.inference_mode() if use_inference else torch.no_grad()


def evaluate(trainer: Trainer, task: Task, loaders: list[Any], stage: str,
             limit: int | float | None) -> list[dict[str, float]]:
    """Run ``validation_step`` or ``test_step`` over every loader; one dict of metrics per loader.

    Hook order: ``on_<stage>_model_eval``, ``on_<stage>_start``, ``on_<stage>_epoch_start``, per batch
    ``on_<stage>_batch_start``, the step, ``on_<stage>_batch_end``; then the task's ``on_<stage>_epoch_end``, the
    epoch metrics reduced, the callbacks' ``on_<stage>_epoch_end``, the loggers; ``on_<stage>_end``.
    """
    step_name = {"validation": "validation_step", "test": "test_step"}[stage]
    if not overrides(task, Task, step_name):
        raise ConfigurationError(f"{type(task).__name__} has no {step_name}(batch, batch_idx) to run {stage} with")
    hooks = trainer._hooks
    hooks.refresh()
    results = LoggedValues(training=False, trainer=trainer)
    task._results = results
    zero_grad = hooks.task_hook("on_validation_model_zero_grad") if stage == "validation" else None
    if zero_grad is not None:
        zero_grad()
    model_eval = hooks.task_hook(f"on_{stage}_model_eval")
    model_eval() if model_eval is not None else task.eval()
    hooks.call(f"on_{stage}_start")
    counts = [trainer._count_batches(loader, limit) for loader in loaders]
    if stage == "validation":
        trainer.num_val_batches = counts
    else:
        trainer.num_test_batches = counts
    hooks.call(f"on_{stage}_epoch_start")
    batch_start, batch_end = hooks.hooks(f"on_{stage}_batch_start"), hooks.hooks(f"on_{stage}_batch_end")
    several = len(loaders) > 1
    with _grad_mode(trainer):
        for idx, (loader, n) in enumerate(zip(loaders, counts)):
            extra = (idx,) if several else ()
            results.dataloader_idx = idx if several else None
            # Evaluation runs no collective per step (ranks may have different numbers of batches, and DDP's
            # forward could sync): steps call the task directly; only sharded models (FSDP) use the wrapper.
            path = BatchPath(trainer, task, step_name, through_wrapper=trainer._strategy_shards_module,
                             dataloader_idx=idx if several else None)
            with contextlib.closing(path.batches(loader, iter(loader), 0, n, lookahead=False)) as batches:
                for batch_idx, batch, _ in batches:
                    results.batch = batch
                    for hook in batch_start:
                        hook(batch, batch_idx, *extra)
                    output = path.run(batch, batch_idx)
                    for hook in batch_end:
                        hook(output, batch, batch_idx, *extra)
            trainer._log_skipped(loader, results, stage)
    results.batch = None
    results.dataloader_idx = None
    getattr(task, f"on_{stage}_epoch_end")()
    metrics = trainer._epoch_end_callbacks(f"on_{stage}_epoch_end", results)
    hooks.call(f"on_{stage}_end")
    values = {k: float(v) for k, v in metrics.items()}
    return [_for_loader(values, i, several) for i in range(len(loaders))]


def _for_loader(values: dict[str, float], idx: int, several: bool) -> dict[str, float]:
    """Lightning's per-loader results: that loader's metrics (suffixed) and the ones of no loader in particular."""
    if not several:
        return dict(values)
    return {k: v for k, v in values.items() if "/dataloader_idx_" not in k or k.endswith(f"/dataloader_idx_{idx}")}


def predict(trainer: Trainer, task: Task, loaders: list[Any], limit: int | float | None) -> list[Any]:
    """``predict_step`` on every batch of every loader: this rank's outputs in order (``None`` for a ``None``
    batch); with several loaders, one list per loader."""
    hooks = trainer._hooks
    hooks.refresh()
    model_eval = hooks.task_hook("on_predict_model_eval")
    model_eval() if model_eval is not None else task.eval()
    hooks.call("on_predict_start")
    counts = [trainer._count_batches(loader, limit) for loader in loaders]
    trainer.num_predict_batches = counts
    hooks.call("on_predict_epoch_start")
    batch_start, batch_end = hooks.hooks("on_predict_batch_start"), hooks.hooks("on_predict_batch_end")
    several = len(loaders) > 1
    outputs: list[list[Any]] = []
    with _grad_mode(trainer):
        for idx, (loader, n) in enumerate(zip(loaders, counts)):
            extra = (idx,) if several else ()
            path = BatchPath(trainer, task, "predict_step", through_wrapper=trainer._strategy_shards_module,
                             dataloader_idx=idx if several else None)
            mine: list[Any] = []
            limit_n = n if math.isfinite(n) else math.inf
            with contextlib.closing(path.batches(loader, iter(loader), 0, limit_n, lookahead=False)) as batches:
                for batch_idx, batch, _ in batches:
                    for hook in batch_start:
                        hook(batch, batch_idx, *extra)
                    output = path.run(batch, batch_idx)
                    for hook in batch_end:
                        hook(output, batch, batch_idx, *extra)
                    mine.append(output)
            outputs.append(mine)
    hooks.call("on_predict_epoch_end")
    hooks.call("on_predict_end")
    return outputs if several else outputs[0]
