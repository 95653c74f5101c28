"""What a training checkpoint holds, and how a fit is restored from one (the layout is in ``dltrain.checkpoint``).

The loop's part is the `dltrain._run_state.LoopState` and the training loader's position; every rank's RNG states
and loader positions are gathered so that each rank resumes its own stream. Like the loops, these functions take
the run's parts (engine, hook dispatcher, run state); the callbacks' own APIs get the trainer view.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dltrain import _sharded, _storage
from dltrain import checkpoint as ckpt_io
from dltrain.errors import CheckpointError, ConfigurationError

if TYPE_CHECKING:
    from dltrain._async_checkpoint import AsyncSave
    from dltrain._engine import Engine
    from dltrain._hooks import HookDispatcher
    from dltrain._run_state import RunState
    from dltrain.callbacks.base import TrainerView
    from dltrain.loop import FitLoop
    from dltrain.task import Task


def save(engine: Engine, hooks: HookDispatcher, run: RunState, task: Task, loop: FitLoop | None,
         path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None, *,
         weights_only: bool = False, background: AsyncSave | None = None,
         after: Callable[[], None] | None = None) -> None:
    """Write a checkpoint of everything needed to resume exactly; every rank must call it.

    Args:
        engine: the run's engine: the weights, optimizers, schedulers and precision state come from it, and its
            collectives gather every rank's RNG state and loader position.
        hooks: the callback dispatcher: each callback's ``state_dict`` is saved and its ``on_save_checkpoint`` runs.
        run: the run's state: loop counters, callback metrics, datamodule and loggers.
        task: the task whose class and hparams are recorded; its ``on_save_checkpoint`` runs.
        loop: the fit's loop (``None`` outside fit: no loader position or training metrics).
        path: the checkpoint file (a directory under ``strategy="fsdp2"``), or a URL of an object store.
        storage_options: fsspec options for a URL; never saved.
        weights_only: the weights, hparams and loop counters only (``ModelCheckpoint(save_weights_only=True)``,
            as Lightning's): such a checkpoint loads for evaluation and ``load_from_checkpoint``, not to resume a
            fit.
        background: the state is copied off the device (DCP's ``async_save`` stages sharded checkpoints) and
            written on this writer thread; the caller has waited for the previous save in flight.
        after: runs on global rank zero once the checkpoint is complete: on the writer thread with
            ``background``, else here once it is written.
    """
    rank_state: dict[str, Any] = {"rng": ckpt_io.rng_state()}
    position = loop.loader_position() if loop is not None else None
    if position is not None:
        rank_state["train_loader"] = position
    from dltrain import __version__

    checkpoint: dict[str, Any] = {
        "format": ckpt_io.FORMAT_VERSION,
        "dltrain_version": __version__,
        "task_class": f"{type(task).__module__}.{type(task).__qualname__}",
        "hparams": ckpt_io.plain_hparams(task.hparams),
        "loops": run.loop_state.state_dict(),
        # Lightning's top-level counters, which users read from a checkpoint (torch.load(path)["epoch"]).
        "epoch": run.loop_state.epoch + run.stopped_in_epoch,
        "global_step": run.loop_state.global_step,
        # Monitored values (ReduceLROnPlateau, ModelCheckpoint, EarlyStopping) as the loop saw them.
        "callback_metrics": {k: float(v) for k, v in run.callback_metrics().items()},
        "callbacks": {cb.state_key: cb.state_dict() for cb in hooks.callbacks},
        "datamodule": run.datamodule.state_dict() if hasattr(run.datamodule, "state_dict") else {},
        # DataModule.load_from_checkpoint builds the data module again from these (Lightning's key).
        "datamodule_hyper_parameters": ckpt_io.plain_hparams(getattr(run.datamodule, "hparams", None) or {}),
        "loggers": [lg.state_dict() for lg in run.loggers],
        "train_metrics": loop.results.state_dict() if loop is not None else {},
        "world_size": engine.world_size,
        "data_parallel_size": engine.layout.size,
    }
    if engine.optimizers and not weights_only:
        checkpoint["lr_schedulers"] = [c.scheduler.state_dict() for c in engine.lr_scheduler_configs]
        checkpoint["precision"] = engine.strategy.precision.state_dict()
    if weights_only:
        checkpoint["weights_only"] = True
        for key in ("callbacks", "loggers", "train_metrics", "lr_schedulers", "precision"):
            checkpoint.pop(key, None)
    sharded = engine.is_fsdp2
    if not sharded:
        # Before the hooks, as in Lightning: a callback may edit the weights written (ModelPruning writes them
        # with its masks applied). Sharded weights are written from the model by every rank (`_sharded.save`).
        checkpoint["state_dict"] = engine.module_state_dict()
    task.on_save_checkpoint(checkpoint)
    hooks.call_callbacks("on_save_checkpoint", checkpoint)
    # Gathered after the hooks ran on every rank: this collective is where the ranks meet, so what a rank's hook
    # wrote out (SampleLedger flushes its file) is on disk before rank 0 writes the checkpoint that commits it.
    checkpoint["ranks"] = engine.gather_objects(rank_state)
    if sharded:  # every rank writes its shards; the rest is written by rank zero
        if engine.is_global_zero:
            for lg in run.loggers:
                lg.save()
        _sharded.save(engine, path, checkpoint, storage_options, optimizers=not weights_only, background=background,
                      after=after)
        return
    if engine.optimizers and not weights_only:
        checkpoint["optimizer_states"] = engine.optimizer_states()
    if background is not None:
        if engine.is_global_zero:
            for lg in run.loggers:
                lg.save()
            staged = background.staging.stage(checkpoint)  # training may go on once this returns

            def write() -> None:
                ckpt_io.save_atomic(staged, path, storage_options)
                if after is not None:
                    after()

            background.writer.submit(write, str(path))
        return
    if engine.is_global_zero:
        ckpt_io.save_atomic(checkpoint, path, storage_options)
        for lg in run.loggers:
            lg.save()
        if after is not None:
            after()
    engine.barrier()


def storage_options(trainer: TrainerView) -> Mapping[str, Any] | None:
    """The fsspec options of the run's checkpoints (the first ModelCheckpoint's ``storage_options``)."""
    from dltrain.callbacks.checkpoint import ModelCheckpoint

    return next((cb.storage_options for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)


def resolve(trainer: TrainerView, ckpt_path: str | os.PathLike[str]) -> Path | str | None:
    """The checkpoint that ``ckpt_path`` names.

    Args:
        trainer: the trainer whose checkpoint callbacks and run folders ``"last"`` and ``"best"`` refer to.
        ckpt_path: a path (or URL), returned as it is; ``"last"``: the newest complete checkpoint of the most recent
            run (``None``: there is none, start from scratch); ``"best"``: the checkpoint callback's best.
    """
    if str(ckpt_path) == "best":
        return _resolve_best(trainer)
    if str(ckpt_path) != "last":
        return str(ckpt_path) if _storage.is_remote(ckpt_path) else Path(_storage.local_path(ckpt_path))
    folders = _last_folders(trainer)
    found = ckpt_io.find_newest_last(folders, storage_options(trainer))
    if found is None and trainer.is_global_zero:
        import sys

        where = ", ".join(repr(str(p)) for p in _last_places(trainer))
        sys.stderr.write(f"[dltrain] ckpt_path='last': no complete checkpoint in {where}; starting from scratch\n")
    return found


def _last_places(trainer: TrainerView) -> list[Path | str]:
    """What `_last_folders` searches, as a user would look for it (for the message when nothing is found).

    The checkpoint callbacks' folders when known, else the run folders' patterns
    (``<root>/<logger name>/*/checkpoints``), and the old layout's folder only when it exists.
    """
    from dltrain.callbacks.checkpoint import ModelCheckpoint, run_folder_patterns

    callbacks = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    if callbacks and all(cb.dirpath is not None for cb in callbacks):
        return list(dict.fromkeys(cb.dirpath for cb in callbacks if cb.dirpath is not None))
    if _storage.is_remote(trainer.default_root_dir):
        return list(run_folder_patterns(trainer))
    old = Path(trainer.default_root_dir) / "checkpoints"
    return [*run_folder_patterns(trainer), *([old] if any(old.glob("*.ckpt")) else [])]


def _last_folders(trainer: TrainerView) -> list[Path | str]:
    """Where "last" is looked for: the checkpoint callbacks' folders, or (not decided yet) every run folder."""
    from dltrain.callbacks.checkpoint import ModelCheckpoint, run_folders

    callbacks = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    if not callbacks:
        return run_folders(trainer)
    return list(dict.fromkeys(folder for cb in callbacks for folder in cb.last_folders(trainer)))


def _resolve_best(trainer: TrainerView) -> Path | str:
    """``trainer.checkpoint_callback.best_model_path``, or the best one its newest checkpoint names.

    The latter in a new process (nothing saved yet): the best checkpoint named by the state of the run's newest
    checkpoint.
    """
    from dltrain.callbacks.checkpoint import ModelCheckpoint

    cb = trainer.checkpoint_callback
    if not isinstance(cb, ModelCheckpoint):
        raise ConfigurationError(
            'ckpt_path="best" needs a ModelCheckpoint callback (enable_checkpointing=True or one in callbacks); '
            'pass a checkpoint path instead'
        )
    options = cb.storage_options
    best = cb.best_model_path
    if not best:
        last = ckpt_io.find_newest_last(cb.last_folders(trainer), options)
        state = ckpt_io.load(last, options).get("callbacks", {}).get(cb.state_key) if last is not None else None
        kept = sorted((float(s), str(p)) for s, p in (state or {}).get("kept", []))
        best = next((p for _, p in reversed(kept) if _exists(p, options)), "")
    if not best or not _exists(best, options):
        raise ConfigurationError(
            f'ckpt_path="best": the ModelCheckpoint {cb.state_key} has no best checkpoint'
            f"{f' ({best!r} does not exist)' if best else ''}; it keeps one once it has saved (save_top_k >= 1). "
            'Pass a checkpoint path, or "last"'
        )
    return best if _storage.is_remote(best) else Path(best)


def _exists(path: str, options: Mapping[str, Any] | None) -> bool:
    return _storage.exists(path, options) if _storage.is_remote(path) else os.path.exists(path)


def load_weights(trainer: TrainerView, engine: Engine, ckpt_path: str | os.PathLike[str],
                 weights_only: bool | None = None, datamodule: Any = None) -> Path | str:
    """Load the model weights (validate/test/predict with ``ckpt_path``); returns the checkpoint's path.

    As Lightning does for these stages: the task's ``on_load_checkpoint`` first (it may rewrite
    ``checkpoint["state_dict"]``), then the weights, then the datamodule's saved state. A checkpoint written with
    weight averaging gives its averaged weights (``averaged_state_dict``), as Lightning's, whose ``state_dict``
    holds them.

    Args:
        trainer: the trainer ``ckpt_path`` is resolved against (`resolve`).
        engine: the engine of the placed task that receives the weights.
        ckpt_path: a path or URL, ``"last"`` or ``"best"`` (`resolve`).
        weights_only: passed to `dltrain.checkpoint.load`; ``False`` unpickles any object: for trusted files only.
        datamodule: the stage's datamodule, given its saved state (``load_state_dict``) if the checkpoint has one.

    Raises:
        CheckpointError: ``ckpt_path="last"`` found no checkpoint.
    """
    path = resolve(trainer, ckpt_path)
    if path is None:
        raise CheckpointError(f"ckpt_path={str(ckpt_path)!r}: no checkpoint found")
    checkpoint = ckpt_io.load(path, storage_options(trainer), weights_only=weights_only)
    if "averaged_state_dict" in checkpoint:
        checkpoint = {**checkpoint, "state_dict": checkpoint["averaged_state_dict"], "sharded": False}
    assert engine.task is not None
    engine.task.on_load_checkpoint(checkpoint)
    _load_model(engine, path, checkpoint)
    if checkpoint.get("datamodule") and hasattr(datamodule, "load_state_dict"):
        datamodule.load_state_dict(checkpoint["datamodule"])
    return path


def _load_model(engine: Engine, path: Path | str, checkpoint: dict[str, Any]) -> None:
    """The weights of a checkpoint into the placed task: from shards (resharded), or from a full state dict."""
    assert engine.task is not None
    if checkpoint.get("sharded"):
        _sharded.load_model(engine, checkpoint.get("_shards", path))
        return
    ckpt_io.check_state_dict(engine.task, checkpoint["state_dict"], str(path))
    if engine.is_fsdp2:
        _sharded.load_full_model(engine, checkpoint["state_dict"])
    else:
        engine.load_module_state_dict(checkpoint["state_dict"])


def restore(trainer: TrainerView, engine: Engine, hooks: HookDispatcher, run: RunState, loop: FitLoop,
            ckpt_path: str | os.PathLike[str], weights_only: bool | None = None) -> dict[str, Any] | None:
    """Restore a fit, but for the optimizers: weights, loop state, callbacks, loggers, loader position, RNG.

    Args:
        trainer: the trainer ``ckpt_path`` is resolved against (`resolve`).
        engine: the engine of the placed task.
        hooks: the callback dispatcher: each callback gets its saved state and ``on_load_checkpoint``.
        run: the run's state that receives the loop counters, callback metrics, datamodule and logger states.
        loop: the fit's loop: its loader position, training metrics and RNG state to restore.
        ckpt_path: a path or URL, ``"last"`` or ``"best"`` (`resolve`).
        weights_only: passed to `dltrain.checkpoint.load`; ``False`` unpickles any object: for trusted files only.

    Returns:
        The checkpoint, for `restore_training_state`, which runs after ``on_fit_start`` (as in Lightning), so that
        callbacks restored here can first rebuild optimizer parameter groups (``BaseFinetuning``); ``None`` when
        ``ckpt_path="last"`` found no checkpoint (a fresh start).
    """
    path = resolve(trainer, ckpt_path)
    if path is None:
        return None
    checkpoint = ckpt_io.load(path, storage_options(trainer), weights_only=weights_only)
    checkpoint["_path"] = str(path)
    return restore_from(trainer, engine, hooks, run, loop, checkpoint, path)


def restore_from(trainer: TrainerView, engine: Engine, hooks: HookDispatcher, run: RunState, loop: FitLoop,
                 checkpoint: dict[str, Any], path: Path | str | None) -> dict[str, Any]:
    """`restore` from a checkpoint already in memory.

    Args:
        trainer: the trainer whose restored callbacks are checked against its configuration.
        engine: the engine of the placed task.
        hooks: the callback dispatcher: each callback gets its saved state and ``on_load_checkpoint``.
        run: the run's state that receives the loop counters, callback metrics, datamodule and logger states.
        loop: the fit's loop: its loader position, training metrics and RNG state to restore.
        checkpoint: the checkpoint's contents.
        path: where it was read from; ``None``: the state a live replica group sent this one (`replica_state`),
            whose weights are a full state dict.

    Returns:
        The checkpoint, for `restore_training_state`.

    Raises:
        CheckpointError: it holds weights only, or it was taken mid-epoch and the training loader cannot restore
            its position.
    """
    if checkpoint.get("weights_only"):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds only weights (ModelCheckpoint(save_weights_only=True)): there is no "
            "optimizer, loop or callback state to resume a fit from. Load it with Task.load_from_checkpoint or "
            "validate/test/predict(ckpt_path=...), or save full checkpoints to resume"
        )
    task = loop.task
    # The task's hook before its weights, as in Lightning: it may rewrite checkpoint["state_dict"] (an older
    # checkpoint's layer names); the callbacks' hooks come after the weights (weight averaging starts from them).
    task.on_load_checkpoint(checkpoint)
    if path is None:
        engine.load_module_state_dict(checkpoint["state_dict"])
    else:
        _load_model(engine, path, checkpoint)
    run.loop_state.load_state_dict(checkpoint["loops"])
    run.published.update({k: torch.tensor(v) for k, v in checkpoint.get("callback_metrics", {}).items()})
    states = checkpoint.get("callbacks", {})
    for cb in hooks.callbacks:
        if cb.state_key in states:
            cb.load_state_dict(states[cb.state_key])
    from dltrain._config_checks import check_restored_callbacks

    check_restored_callbacks(trainer, states)
    if engine.is_global_zero:
        for lg, state in zip(run.loggers, checkpoint.get("loggers", [])):
            lg.load_state_dict(state)
    if checkpoint.get("datamodule") and hasattr(run.datamodule, "load_state_dict"):
        run.datamodule.load_state_dict(checkpoint["datamodule"])
    hooks.call_callbacks("on_load_checkpoint", checkpoint)
    ranks = checkpoint.get("ranks", [])
    # A rank's own state (RNG, loader position) is its own only on the same mesh: global rank r is the same
    # (data-parallel, tensor-parallel) position when both the world and the data-parallel size are the same.
    same_layout = (checkpoint.get("world_size") == engine.world_size
                   and checkpoint.get("data_parallel_size", checkpoint.get("world_size")) == engine.layout.size)
    mine = ranks[engine.global_rank] if same_layout and engine.global_rank < len(ranks) else None
    state = run.loop_state
    if state.phase == "epoch_end":
        loop.resumed = "epoch_end"
    elif state.batches_done == 0:
        loop.resumed = "epoch_start"
    else:
        loop.resumed = "mid_epoch"
        loop.results.load_state_dict(checkpoint.get("train_metrics", {}))
        loader_state = (mine or (ranks[0] if ranks else {})).get("train_loader")
        if loader_state is not None and hasattr(loop.loader, "load_state_dict"):
            loop.loader.load_state_dict(loader_state)
            # With another world size the loader re-splits what is left; it knows which batch is next.
            state.batches_done = int(loop.loader.state_dict().get("batches", state.batches_done))
        else:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was taken in the middle of an epoch, but the training loader "
                f"({type(loop.loader).__name__}) cannot restore its position (no load_state_dict). Use a "
                "map-style DataLoader or dltrain.data.StreamingDataset, or checkpoint at epoch ends only."
            )
    # RNG states are per rank; with another world size there is no matching state: keep the fresh seed.
    loop.pending_rng = mine["rng"] if mine is not None else None
    return checkpoint


def replica_state(engine: Engine, hooks: HookDispatcher, run: RunState, loop: FitLoop) -> dict[str, Any]:
    """What rank ``r`` of a live replica group sends rank ``r`` of a group that joins (dltrain.FaultTolerant).

    A checkpoint of this moment (a step's start) in memory, with this rank's loader position and RNG state as the
    joining rank's own (rank ``r`` of every group is at the same batch of its own share of the epoch). Made on
    torchft's quorum thread while the training thread waits: no collective, no hook. The tensors are the live
    ones (torchft serves them until this step's commit vote, before any optimizer step changes them).
    """
    rank_state: dict[str, Any] = {"rng": ckpt_io.rng_state()}
    if loop.replica_position is not None:  # after the batches done: the step's batch is read already
        rank_state["train_loader"] = loop.replica_position
    ranks: list[dict[str, Any]] = [{} for _ in range(engine.world_size)]
    ranks[engine.global_rank] = rank_state
    return {
        "format": ckpt_io.FORMAT_VERSION,
        "_path": f"<the state of a live replica group at step {run.loop_state.global_step}>",
        "loops": run.loop_state.state_dict(),
        # Lightning's top-level counters, which users read from a checkpoint (torch.load(path)["epoch"]).
        "epoch": run.loop_state.epoch + run.stopped_in_epoch,
        "global_step": run.loop_state.global_step,
        "callback_metrics": {k: float(v) for k, v in run.callback_metrics().items()},
        "callbacks": {cb.state_key: cb.state_dict() for cb in hooks.callbacks},
        "train_metrics": loop.results.state_dict(),
        "world_size": engine.world_size,
        "data_parallel_size": engine.layout.size,
        "ranks": ranks,
        "replica_heal": True,
        "state_dict": engine.module_state_dict(),
        "optimizer_states": engine.optimizer_states(),
        "lr_schedulers": [c.scheduler.state_dict() for c in engine.lr_scheduler_configs],
        "precision": engine.strategy.precision.state_dict(),
    }


def load_replica_state_in_loop(engine: Engine, run: RunState, state: dict[str, Any]) -> None:
    """Catch a live replica group that fell behind up with the others, at the start of a step.

    A group that did not commit a step the others committed takes their weights, optimizer and scheduler states
    and step count (`replica_state`); it is at the same batch already.

    Raises:
        DistributedError: the groups are not at the same epoch and batch.
    """
    from dltrain.errors import DistributedError

    mine, theirs = run.loop_state, state["loops"]
    if (mine.epoch, mine.batches_done) != (theirs["epoch"], theirs["batches_done"]):
        raise DistributedError(
            f"replica groups out of step: this group is at epoch {mine.epoch}, batch {mine.batches_done}, the group "
            f"it heals from at epoch {theirs['epoch']}, batch {theirs['batches_done']} (global step "
            f"{theirs['global_step']}); every group must run the same number of batches per epoch")
    engine.load_module_state_dict(state["state_dict"])
    for optimizer, optimizer_state in zip(engine.fabric_optimizers, state["optimizer_states"]):
        optimizer.load_state_dict(optimizer_state)
    for config, scheduler_state in zip(engine.lr_scheduler_configs, state["lr_schedulers"]):
        config.scheduler.load_state_dict(scheduler_state)
    if state.get("precision"):
        engine.strategy.precision.load_state_dict(state["precision"])
    mine.global_step = int(theirs["global_step"])


def restore_training_state(engine: Engine, checkpoint: dict[str, Any]) -> None:
    """Optimizer, scheduler and precision (grad scaler) states: the second half of a resume."""
    path = checkpoint["_path"]
    if checkpoint.get("sharded"):
        _sharded.load_optimizers(engine, checkpoint.get("_shards", path))
        states = []
    else:
        states = _full_optimizer_states(engine, checkpoint, path)
    for optimizer, optimizer_state in zip(engine.fabric_optimizers, states):
        optimizer.load_state_dict(optimizer_state)
    for config, state in zip(engine.lr_scheduler_configs, checkpoint.get("lr_schedulers", [])):
        config.scheduler.load_state_dict(state)
    if checkpoint.get("precision"):
        engine.strategy.precision.load_state_dict(checkpoint["precision"])


def _full_optimizer_states(engine: Engine, checkpoint: dict[str, Any], path: str) -> list[Any]:
    if engine.is_fsdp2:
        raise CheckpointError(
            f'checkpoint {path!r} is a full (unsharded) checkpoint: under strategy="fsdp2" only its weights can be '
            "loaded (validate/test/predict with ckpt_path, or load them in configure_model); resume it with the "
            "strategy that wrote it"
        )
    states = checkpoint.get("optimizer_states", [checkpoint["optimizer"]] if "optimizer" in checkpoint else [])
    if len(states) != len(engine.fabric_optimizers):
        raise CheckpointError(
            f"checkpoint {path!r} holds {len(states)} optimizer states, but configure_optimizers() returned "
            f"{len(engine.fabric_optimizers)} optimizers"
        )
    return list(states)
