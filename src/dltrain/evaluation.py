"""The evaluation and prediction loops, on the same batch path as training (``dltrain.batch_path.BatchPath``).

Each evaluation loader is run in turn; with several, steps and batch hooks get a ``dataloader_idx`` argument and
logged names a ``/dataloader_idx_<i>`` suffix, as in Lightning. Metrics are epoch aggregates reduced over every
rank (weighted by batch sizes), so distributed evaluation is exact.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

from dltrain._hooks import overrides
from dltrain._logged_values import LoggedValues
from dltrain._run_state import log_skipped_samples
from dltrain.batch_path import BatchPath
from dltrain.errors import ConfigurationError
from dltrain.task import Task, log_into

if TYPE_CHECKING:
    from dltrain._engine import Engine
    from dltrain._hooks import HookDispatcher
    from dltrain._run_state import RunState
    from dltrain._settings import Settings

__all__ = ["evaluate", "predict"]


def evaluate(settings: Settings, engine: Engine, hooks: HookDispatcher, run: RunState, task: Task,
             loaders: list[Any], stage: str, limit: int | float | None,
             cap: int | None = None) -> list[dict[str, float]]:
    """Run ``validation_step`` or ``test_step`` over every loader; one dict of metrics per loader.

    Each loader runs its batches under ``limit`` (a ``limit_*_batches`` value), and at most ``cap`` of them.

    Hook order: ``on_<stage>_model_eval``, ``on_<stage>_start``, ``on_<stage>_epoch_start``, per batch
    ``on_<stage>_batch_start``, the step, ``on_<stage>_batch_end``; then the task's ``on_<stage>_epoch_end``, the
    epoch metrics reduced, the callbacks' ``on_<stage>_epoch_end``, the loggers; ``on_<stage>_end``.
    """
    step_name = {"validation": "validation_step", "test": "test_step"}[stage]
    if not overrides(task, Task, step_name):
        raise ConfigurationError(f"{type(task).__name__} has no {step_name}(batch, batch_idx) to run {stage} with")
    hooks.refresh()
    results = LoggedValues(training=False, trainer=hooks.view)
    log_into(task, results)
    zero_grad = hooks.task_hook("on_validation_model_zero_grad") if stage == "validation" else None
    if zero_grad is not None:
        zero_grad()
    model_eval = hooks.task_hook(f"on_{stage}_model_eval")
    model_eval() if model_eval is not None else task.eval()
    hooks.call(f"on_{stage}_start")
    full = [settings.count_batches(loader, limit) for loader in loaders]
    counts = full if cap is None else [min(n, cap) for n in full]
    # The loaders' own counts, also in the sanity check (which runs `cap` of them: num_sanity_val_batches).
    if stage == "validation":
        run.num_val_batches = full
    else:
        run.num_test_batches = full
    hooks.call(f"on_{stage}_epoch_start")
    batch_start, batch_end = hooks.hooks(f"on_{stage}_batch_start"), hooks.hooks(f"on_{stage}_batch_end")
    several = len(loaders) > 1
    with engine.evaluation_grad_mode(settings.inference_mode):
        for idx, (loader, n) in enumerate(zip(loaders, counts)):
            extra = (idx,) if several else ()
            results.dataloader_idx = idx if several else None
            # Evaluation runs no collective per step (ranks may have different numbers of batches, and DDP's
            # forward could sync): steps call the task directly; only sharded models (FSDP) use the wrapper.
            path = BatchPath(engine, hooks, run.loop_state, task, step_name, through_wrapper=engine.shards_module,
                             dataloader_idx=idx if several else None, datamodule=run.datamodule)
            with contextlib.closing(path.batches(loader, iter(loader), 0, n, lookahead=False)) as batches:
                for batch_idx, batch, _ in batches:
                    results.batch = batch
                    for hook in batch_start:
                        hook(batch, batch_idx, *extra)
                    output = path.run(batch, batch_idx)
                    for hook in batch_end:
                        hook(output, batch, batch_idx, *extra)
            log_skipped_samples(loader, results, stage)
    results.batch = None
    results.dataloader_idx = None
    with results.epoch_values():  # epoch values only (Lightning's rule for the epoch-end hooks)
        getattr(task, f"on_{stage}_epoch_end")()
    metrics = run.end_epoch(results, hooks, f"on_{stage}_epoch_end")
    hooks.call(f"on_{stage}_end")
    values = {k: float(v) for k, v in metrics.items()}
    if not several:
        return [values]
    loader_of = results.loaders_of_keys()
    return [{k: v for k, v in values.items() if loader_of.get(k) in (None, i)} for i in range(len(loaders))]


def predict(settings: Settings, engine: Engine, hooks: HookDispatcher, run: RunState, task: Task,
            loaders: list[Any], limit: int | float | None) -> list[Any]:
    """``predict_step`` on every batch of every loader: this rank's outputs in order.

    ``None`` for a ``None`` batch; with several loaders, one list per loader.
    """
    hooks.refresh()
    model_eval = hooks.task_hook("on_predict_model_eval")
    model_eval() if model_eval is not None else task.eval()
    hooks.call("on_predict_start")
    counts = [settings.count_batches(loader, limit) for loader in loaders]
    run.num_predict_batches = counts
    hooks.call("on_predict_epoch_start")
    batch_start, batch_end = hooks.hooks("on_predict_batch_start"), hooks.hooks("on_predict_batch_end")
    several = len(loaders) > 1
    outputs: list[list[Any]] = []
    with engine.evaluation_grad_mode(settings.inference_mode):
        for idx, (loader, n) in enumerate(zip(loaders, counts)):
            extra = (idx,) if several else ()
            path = BatchPath(engine, hooks, run.loop_state, task, "predict_step",
                             through_wrapper=engine.shards_module, dataloader_idx=idx if several else None,
                             datamodule=run.datamodule)
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
