"""`ModelCheckpoint`: save checkpoints on a schedule, keep the best ones, and maintain ``last.ckpt``."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from typing_extensions import override

from dltrain import _storage
from dltrain import checkpoint as ckpt_io
from dltrain.callbacks.base import Checkpoint
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain._async_checkpoint import AsyncSave
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["ModelCheckpoint"]

_VERSION_RE = re.compile(r"^version_(\d+)$")
# A template field: "{name}" or "{name:spec}"; the name may hold "/" and "." ("{val/acc:.3f}").
_FIELD_RE = re.compile(r"\{([^{}:]+)(?::([^{}]*))?\}")


class ModelCheckpoint(Checkpoint):
    """Save checkpoints on a schedule, keep the ``save_top_k`` best and maintain ``last.ckpt``, as Lightning's.

    Every ``every_n_epochs`` epochs, every ``every_n_train_steps`` optimizer steps and/or every
    ``train_time_interval``; Lightning's arguments, names and folders.

    **Names.** ``filename`` is a template of ``epoch``, ``step`` and any logged metric, with Python format specs:
    ``"digits-{epoch:02d}-{val_acc:.3f}"`` gives ``digits-epoch=03-val_acc=0.912.ckpt``
    (``auto_insert_metric_name=False``: ``digits-03-0.912.ckpt``). The default ``"{epoch}-{step}"`` gives
    ``epoch=3-step=1200.ckpt`` with the step Lightning writes (optimizer steps so far). A metric not logged is 0. A
    name with ``/`` (``"{val/loss:.2f}"``) makes a sub-folder, as in Lightning (``auto_insert_metric_name=False``
    with your own text avoids it). When the name is already taken by a file this callback did not write, the new
    one is ``<name>-v1.ckpt`` (``enable_version_counter=False``: the file is replaced).

    **Folders.** ``dirpath``, else the run's own (Lightning's layout): the first logger's
    ``<save_dir>/<name>/<version>/checkpoints`` (``<default_root_dir>/lightning_logs/version_<N>/checkpoints`` with
    the default logger), or ``<default_root_dir>/checkpoints`` without a logger. A resumed fit
    (``fit(ckpt_path=...)``) continues the run it resumes: the logger's version comes back from the checkpoint, and
    with it the folder. ``fit(ckpt_path="last")`` resumes the run whose checkpoint was written most recently.

    **Safety.** Every write is atomic; ``last.ckpt`` is re-pointed only after the new checkpoint is complete, so it
    always loads. The callback deletes only files it wrote itself under its own folder: entries of a restored state
    that lie elsewhere (fine-tuning from another run's checkpoint) are forgotten, never removed, and a second run
    never deletes the first run's files. At the start of a fit, temporary files that killed processes left while
    writing a checkpoint are removed.

    **When.** By default at every epoch end. With validation more often than once per epoch
    (``val_check_interval``) or not every epoch (``check_val_every_n_epoch``), after the validations instead
    (``save_on_train_epoch_end=None`` decides as Lightning: at the epoch end when validation runs once at every
    epoch end, or when there is no validation). The state a fit ends in is always in ``last`` (when ``save_last``).
    Beyond Lightning, ``every_n_train_steps`` and ``every_n_epochs`` may be combined.

    Attributes (Lightning's meanings):
        best_model_path: the best kept checkpoint (the newest when nothing is monitored); ``""`` before the first.
        best_model_score: the monitored value of ``best_model_path`` (a tensor), ``None`` without ``monitor``.
        best_k_models: kept checkpoint path -> monitored value (empty without ``monitor``).
        last_model_path: ``last.ckpt`` (what ``fit(ckpt_path="last")`` resumes from); ``""`` before the first.
        dirpath: the folder, once known (at the start of ``fit`` when not given).

    Args:
        dirpath: the folder of the checkpoints, a path or a URL of an object store (``s3://bucket/run``); default:
            the run's folder (**Folders**, above).
        filename: the name template, without extension (default ``"{epoch}-{step}"``; **Names**, above).
        monitor: the logged metric that ranks the checkpoints, e.g. ``"val/loss"``; ``None``: the newest is the
            best. As in Lightning, a metric not logged yet is warned about (only ``last`` is saved) until a
            validation has run, then it is an error.
        verbose: say what is saved and why (on stderr, from global rank zero).
        save_last: maintain ``last.ckpt``, the state of the latest save (what ``fit(ckpt_path="last")`` resumes
            from). Unlike Lightning, on by default (``True``); ``False`` or ``None`` (Lightning's default) writes
            none. ``"link"`` is accepted: dltrain's ``last.ckpt`` always names the newest checkpoint (a link) when
            that one is kept, and is a checkpoint of its own otherwise.
        save_top_k: how many checkpoints to keep (-1: all, 0: none but ``last``), the best by ``monitor``.
            Without ``monitor``, the newest k (Lightning refuses k > 1 without ``monitor``).
        save_on_exception: when ``fit`` raises, save a checkpoint (and ``last``) of the state it stopped in, as
            Lightning's; only on one process (a save needs every rank: with several, it says so and saves none).
        save_weights_only: save only the weights (and hparams, loop counters), as Lightning's:
            ``load_from_checkpoint`` and ``validate/test(ckpt_path=...)`` read them; a fit cannot resume from them.
        mode: ``"min"`` (the lowest ``monitor`` is the best) or ``"max"``; anything else is an error.
        auto_insert_metric_name: write ``name=`` before each field of the template, as Lightning.
        every_n_train_steps: save after every n optimizer steps (mid-epoch checkpoints); 0 or ``None``: not by
            steps. Unlike Lightning, it may be combined with ``every_n_epochs`` and ``train_time_interval``.
        train_time_interval: save after the first optimizer step that ends at least this long after the start of
            training or the previous save it made (global rank zero's clock decides for every rank).
        every_n_epochs: save at the end of every n epochs (0 disables); default 1, or 0 when a step or time
            interval is given, as Lightning.
        save_on_train_epoch_end: take the epoch's checkpoint at the training epoch end (``True``) or after
            validation (``False``); ``None``: decided as Lightning (**When**, above).
        enable_version_counter: add ``-v<N>`` to a name taken by a file this callback did not write; ``False``:
            replace that file, as Lightning.
        storage_options: fsspec options when ``dirpath`` (or ``default_root_dir``) is a URL of an object store,
            for what the environment's credentials and endpoint do not cover; never saved. Not a Lightning
            argument here (Lightning passes them to ``CheckpointIO``).
        async_save: copy the state off the device and write it in the background while training continues (at
            most one save in flight; the end of ``fit``, a preemption and an exception wait for it). Not a
            Lightning argument: Lightning's ``Trainer(plugins=[AsyncCheckpointIO()])`` turns it on in every
            ModelCheckpoint.

    Example:
        >>> ckpt = ModelCheckpoint(monitor="val/acc", mode="max", save_top_k=2, filename="{epoch:02d}-{val/acc:.3f}",
        ...                        auto_insert_metric_name=False)
    """

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | Literal["link"] | None = True,
        save_top_k: int = 1,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
        storage_options: dict[str, Any] | None = None,
        async_save: bool = False,
    ) -> None:
        if mode not in ("min", "max"):
            raise ConfigurationError(f"ModelCheckpoint(mode={mode!r}): use 'min' or 'max'")
        if save_top_k < -1:
            raise ConfigurationError(f"ModelCheckpoint(save_top_k={save_top_k}): use -1 (all), 0 (none) or more")
        for arg, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and value < 0:
                raise ConfigurationError(f"ModelCheckpoint({arg}={value}): use a number >= 0")
        if save_last not in (True, False, None, "link"):
            raise ConfigurationError(f"ModelCheckpoint(save_last={save_last!r}): use True, False or 'link'")
        self._dirpath_given = _folder(dirpath) if dirpath is not None else None
        self.dirpath: Path | str | None = self._dirpath_given
        self.storage_options = storage_options
        self.async_save = async_save
        self._async: AsyncSave | None = None  # the writer thread of asynchronous saves, made at the first
        self._unannounced: list[Any] = []  # loggers to tell of the save in flight once it is complete
        self.filename = filename
        self.monitor = monitor
        self.verbose = verbose
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.save_on_exception = save_on_exception
        self.save_weights_only = save_weights_only
        self.auto_insert_metric_name = auto_insert_metric_name
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        # Lightning's defaults: every epoch unless a step or time interval is given (0 counts as not given).
        if every_n_epochs is None:
            every_n_epochs = 0 if (every_n_train_steps or train_time_interval is not None) else 1
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_n_epochs = every_n_epochs
        self.train_time_interval = train_time_interval
        # (score, path) of the checkpoints we keep, in the order saved; scores are floats, higher is better (the
        # step when unmonitored, so the newest is "best").
        self.kept: list[tuple[float, str]] = []
        self.last_path: str | None = None  # the file "last" names; it exists whenever this is set
        self.current_score: torch.Tensor | None = None
        self._last_saved_step = -1
        self._last_time_checked: float | None = None
        self._defer_to_validation = False  # a step/time save whose monitored metric comes with the next validation
        self._validated_epoch: int | None = None  # the epoch whose end-of-epoch validation ran (during fit)
        self._validation_ran = False  # a validation of this fit has ended (a monitored metric must exist now)
        self._rng_before_validation: dict[str, Any] | None = None
        self._resolved = False  # dirpath decided for this fit, restored state checked against it
        self._restored_dirpath: str | None = None
        self._written: set[str] = set()  # files this callback wrote (normalised paths)

    @property
    @override
    def state_key(self) -> str:
        return f"ModelCheckpoint[{self.monitor or ''},{self.filename or '{epoch}-{step}'}]"

    # ------------------------------------------------------------------ Lightning's attributes
    @property
    def best_model_path(self) -> str:
        """The best kept checkpoint (the newest when nothing is monitored); ``""`` before the first."""
        return self._best()[1] if self.kept else ""

    @property
    def best_model_score(self) -> torch.Tensor | None:
        """The monitored value of ``best_model_path``; ``None`` without ``monitor`` or before the first save."""
        if self.monitor is None or not self.kept:
            return None
        return torch.tensor(self._value(self._best()[0]))

    @property
    def best_k_models(self) -> dict[str, torch.Tensor]:
        """Each kept checkpoint's path and monitored value (empty without ``monitor``)."""
        if self.monitor is None:
            return {}
        return {p: torch.tensor(self._value(s)) for s, p in self.kept}

    @property
    def kth_best_model_path(self) -> str:
        """The worst of the kept checkpoints, the next one evicted; ``""`` before the first."""
        return self._kth()[1] if self.kept else ""

    @property
    def kth_value(self) -> torch.Tensor:
        """The monitored value a checkpoint must beat to be kept.

        ``inf`` (``mode="min"``) or ``-inf`` (``"max"``) while fewer than ``save_top_k`` are kept, or without
        ``monitor``.
        """
        if self.monitor is None or not self.kept or (self.save_top_k != -1 and len(self.kept) < self.save_top_k):
            return torch.tensor(math.inf if self.mode == "min" else -math.inf)
        return torch.tensor(self._value(self._kth()[0]))

    @property
    def last_model_path(self) -> str:
        """``last.ckpt`` (what ``fit(ckpt_path="last")`` resumes from); ``""`` before the first save."""
        return self.last_path or ""

    def _best(self) -> tuple[float, str]:
        return max(self.kept, key=lambda sp: sp[0])  # the first saved of the best scores

    def _kth(self) -> tuple[float, str]:
        return min(self.kept, key=lambda sp: sp[0])  # the first saved of the worst scores

    def _value(self, score: float) -> float:
        """The monitored value behind a stored score (NaN was stored as the worst: +inf for min, -inf for max)."""
        return -score if self.mode == "min" else score

    # ------------------------------------------------------------------ names
    def format_checkpoint_name(
        self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None, prefix: str | None = None
    ) -> str:
        """The path (under ``dirpath`` when known) that the template gives for ``metrics`` (Lightning's method).

        Args:
            metrics: the values of the template's fields (a missing one is 0).
            filename: a template to use instead of this callback's ``filename``.
            ver: a version to append (``-v<ver>``), as for a name already taken.
            prefix: text to put before the name, joined with ``-``.

        Example:
            >>> ModelCheckpoint(filename="{epoch:02d}-{val_loss:.2f}").format_checkpoint_name(
            ...     {"epoch": 3, "val_loss": 0.1234})
            'epoch=03-val_loss=0.12.ckpt'
        """
        template = filename or self.filename or ("{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}")
        name = _fill(template, metrics, self.CHECKPOINT_EQUALS_CHAR if self.auto_insert_metric_name else None)
        if prefix is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join([prefix, name])
        if ver is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join([name, f"v{ver}"])
        name += self.FILE_EXTENSION
        return str(_join(self.dirpath, name)) if self.dirpath is not None else name

    def _candidates(self, trainer: TrainerView) -> dict[str, Any]:
        """The values a name is made of: logged metrics, ``epoch`` and ``step`` as ints.

        Lightning's rule: a logged ``epoch``/``step`` wins, cast to int.
        """
        values: dict[str, Any] = {}
        for key, value in trainer.callback_metrics.items():
            with contextlib.suppress(Exception):
                values[key] = value.item() if isinstance(value, torch.Tensor) else float(value)
        values["epoch"] = int(values["epoch"]) if "epoch" in values else trainer.current_epoch
        values["step"] = int(values["step"]) if "step" in values else trainer.global_step
        return values

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: TrainerView, task: Task, stage: str) -> None:
        if stage == "fit":
            self._resolved = False
            self._defer_to_validation = False
            self._validated_epoch = None
            self._validation_ran = False

    @override
    def on_fit_start(self, trainer: TrainerView, task: Task) -> None:
        # After a resume has restored the loggers (their version: the run's folder) and this callback's state.
        self._resolve(trainer)

    @override
    def on_train_start(self, trainer: TrainerView, task: Task) -> None:
        self._last_time_checked = time.monotonic()

    @override
    def on_train_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = self.every_n_train_steps
        if not n and self.train_time_interval is None:
            return  # saves at epoch (and validation) ends only: nothing to decide per batch
        if not trainer.loop_state.stepped or trainer.global_step == self._last_saved_step:
            return  # only right after an optimizer step (not inside an accumulation window), once per step
        due = bool(n) and trainer.global_step % n == 0
        if self.train_time_interval is not None:
            now = time.monotonic()
            elapsed = self._last_time_checked is not None and (
                now - self._last_time_checked >= self.train_time_interval.total_seconds())
            if trainer.world_size > 1:  # clocks differ: rank zero decides for everyone
                elapsed = bool(trainer.fabric.broadcast(elapsed, src=0))
            if elapsed:
                self._last_time_checked = now
                due = True
        if not due:
            return
        if self.monitor is not None and self.monitor not in trainer.callback_metrics:
            self._defer_to_validation = True  # a validation metric: saved once the next validation has run
            return
        self._save(trainer)

    @override
    def on_validation_start(self, trainer: TrainerView, task: Task) -> None:
        if self._in_fit(trainer) and not trainer.is_last_batch:
            # The fit loop restores this RNG state after a validation inside an epoch; a checkpoint taken at its
            # end must hold it, so that a resume continues the training stream the uninterrupted run continued.
            self._rng_before_validation = ckpt_io.rng_state()

    @override
    def on_validation_end(self, trainer: TrainerView, task: Task) -> None:
        if not self._in_fit(trainer):
            return
        self._validation_ran = True
        if trainer.is_last_batch:  # the epoch's validation: its checkpoint is taken at the epoch end, below
            self._validated_epoch = trainer.current_epoch
            return
        rng, self._rng_before_validation = self._rng_before_validation, None
        due = self._defer_to_validation or (
            not self._on_train_epoch_end(trainer) and self._epoch_due(trainer))
        if due and trainer.global_step != self._last_saved_step:
            self._defer_to_validation = False
            after = ckpt_io.rng_state()
            if rng is not None:
                ckpt_io.set_rng_state(rng)
            try:
                self._save(trainer)
            finally:
                ckpt_io.set_rng_state(after)

    @override
    def on_train_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        if trainer.global_step == self._last_saved_step:
            return
        if self._defer_to_validation and self._validated_epoch == trainer.current_epoch:
            self._defer_to_validation = False
            self._save(trainer)
        elif self._epoch_due(trainer) and (
            self._on_train_epoch_end(trainer) or self._validated_epoch == trainer.current_epoch
        ):
            self._save(trainer)

    @override
    def on_fit_end(self, trainer: TrainerView, task: Task) -> None:
        # The state a fit ends in is always in "last", whatever the schedule: it is what a resume continues from.
        if self.save_last and trainer.global_step != self._last_saved_step and trainer.global_step > 0:
            self._save(trainer, top_k=False)
        self.wait(trainer, "the end of fit")

    @override
    def on_exception(self, trainer: TrainerView, task: Task, exception: BaseException) -> None:
        # The checkpoint in flight (async_save) is still written; its own failure is logged, the exception goes on.
        self.wait(trainer, f"handling {type(exception).__name__}", raise_error=False)
        if not self.save_on_exception or trainer.sanity_checking or trainer.global_step == self._last_saved_step:
            return
        if trainer.stage != "fit":
            return
        if trainer.world_size > 1:
            # Saving is collective; the other ranks are not here (one rank failed), so a save would hang.
            sys.stderr.write(f"[dltrain] ModelCheckpoint(save_on_exception=True): not saved after "
                             f"{type(exception).__name__} on rank {trainer.global_rank}: a save needs every rank\n")
            return
        path = self._save(trainer, top_k=None)
        self.wait(trainer, f"handling {type(exception).__name__}", raise_error=False)
        if trainer.is_global_zero and path is not None:
            sys.stderr.write(f"[dltrain] {type(exception).__name__} raised ({exception}); saved checkpoint to "
                             f"{path}\n")

    def _in_fit(self, trainer: TrainerView) -> bool:
        return trainer.stage == "fit" and not trainer.sanity_checking

    def _epoch_due(self, trainer: TrainerView) -> bool:
        n = self.every_n_epochs
        return bool(n) and (trainer.current_epoch + 1) % n == 0

    def _on_train_epoch_end(self, trainer: TrainerView) -> bool:
        """Whether the epoch's checkpoint is taken at the training epoch end (else after validation)."""
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        if trainer.val_dataloaders is None or not sum(trainer.num_val_batches or [0]):
            return True  # no validation
        if trainer.check_val_every_n_epoch != 1:
            return False
        interval = trainer.val_check_interval
        return interval is None or (isinstance(interval, float) and interval == 1.0)

    # ------------------------------------------------------------------ the run's folder
    def _resolve(self, trainer: TrainerView) -> None:
        """Decide the folder (global rank zero decides, every rank learns it) for this fit.

        Keep only the restored entries that are this callback's own files in it; remove stale temporaries there.
        """
        decision: tuple[str, list[tuple[float, str]], str | None] | None = None
        # Rank zero of this process group decides; only the job's rank zero writes (with replica groups the
        # other groups' rank zero decides for its group, and group 0 writes the checkpoints).
        if trainer.global_rank == 0:
            folder = self._dirpath_given if self._dirpath_given is not None else self._default_dirpath(trainer)
            if trainer.is_global_zero:
                if isinstance(folder, str):  # an object store: no folders; parts no commit names of killed saves
                    from dltrain import _remote_checkpoint

                    _remote_checkpoint.remove_stale_parts(folder, self.storage_options)
                else:
                    folder.mkdir(parents=True, exist_ok=True)
                    ckpt_io.remove_stale_temporaries(folder)
            # A checkpoint is a file, or a directory (sharded, strategy="fsdp2"), or a commit object.
            kept = [(float(s), str(p)) for s, p in self.kept if _inside(p, folder) and self._exists(p)]
            last = self.last_path if self.last_path and _inside(self.last_path, folder) else None
            decision = (str(folder), kept, last if last is not None and self._exists(last) else None)
        if trainer.world_size > 1:
            decision = trainer.fabric.broadcast(decision, src=0)
        assert decision is not None
        folder_name, self.kept, self.last_path = decision
        self.dirpath = _folder(folder_name)
        self._written = {_norm(p) for _, p in self.kept} | ({_norm(self.last_path)} if self.last_path else set())
        self._restored_dirpath = None
        self._resolved = True

    def _default_dirpath(self, trainer: TrainerView) -> Path | str:
        run = _logger_run_dir(trainer)
        if run is not None:
            return _join(run, "checkpoints")
        return _join(_folder(trainer.default_root_dir), "checkpoints")  # no logger: Lightning's folder

    def last_folders(self, trainer: TrainerView) -> list[Path | str]:
        """Where ``fit(ckpt_path="last")`` looks: the folder when given or known, else every run folder.

        Args:
            trainer: the trainer whose run folders (`run_folders`) are searched while the folder is not known.
        """
        if self.dirpath is not None:
            return [self.dirpath]
        return run_folders(trainer)

    def _mine(self, path: str | os.PathLike[str]) -> bool:
        return _norm(path) in self._written

    def _exists(self, path: str | os.PathLike[str]) -> bool:
        if _storage.is_remote(path):
            return _storage.exists(str(path), self.storage_options)
        return os.path.exists(path)

    def _free_name(self, trainer: TrainerView, metrics: dict[str, Any], template: str | None) -> str:
        """The template's path, or ``<name>-v<N>.ckpt`` while that names a file this callback did not write."""
        path = self.format_checkpoint_name(metrics, template)
        if not self._enable_version_counter:
            return path
        candidate, n = path, self.STARTING_VERSION
        while self._exists(candidate) and not self._mine(candidate):
            candidate = self.format_checkpoint_name(metrics, template, ver=n)
            n += 1
        return candidate

    def _remove(self, path: str, keep_parts: set[str] | None = None) -> None:
        if self.dirpath is None or not _inside(path, self.dirpath) or not self._mine(path):
            return  # never a file of another run, nor one outside this callback's folder
        if _storage.is_remote(path):  # the commit first (gone in one step), then its parts if nothing names them
            from dltrain import _remote_checkpoint

            _remote_checkpoint.remove(path, keep_parts or set(), self.storage_options)
            self._written.discard(_norm(path))
            return
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(path) and not os.path.islink(path):  # a sharded checkpoint
                shutil.rmtree(path)
            else:
                os.remove(path)
        self._written.discard(_norm(path))

    # ------------------------------------------------------------------ saving
    def _score(self, trainer: TrainerView) -> float | None:
        """The ranking score (higher is better); None: the monitored metric is missing (warned, not ranked)."""
        if self.monitor is None:
            return float(trainer.global_step)  # newest is "best" when nothing is monitored
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            message = (f"ModelCheckpoint(monitor={self.monitor!r}) could not find the monitored metric in the "
                       f"logged metrics {sorted(trainer.callback_metrics)} (epoch {trainer.current_epoch}, step "
                       f"{trainer.global_step}): did you call self.log({self.monitor!r}, value)?")
            if self._validation_ran:
                raise ConfigurationError(message)  # validation ran and did not log it
            warnings.warn(message + " Only 'last' is saved until it is logged", UserWarning, stacklevel=2)
            return None
        score = float(value)
        if math.isnan(score):
            return -math.inf
        return -score if self.mode == "min" else score

    def _save(self, trainer: TrainerView, top_k: bool | None = True) -> str | None:
        """Save a checkpoint; returns the path written (None: nothing).

        A top-k candidate (``top_k=True``), only ``last`` (``False``), or the template's name unconditionally
        without ranking it (``None``, on exception).
        """
        background = self._background(trainer)
        if background is not None:  # at most one save in flight: this one waits (and says so) for the last
            self.wait(trainer, f"the save at global step {trainer.global_step}")
        if not self._resolved:
            self._resolve(trainer)
        assert self.dirpath is not None
        score = self._score(trainer) if top_k else None  # on every rank: a missing metric raises everywhere
        metrics = self._candidates(trainer)
        # Rank zero decides (it alone sees the files); every rank joins the save (it gathers their RNG states and
        # data positions) and keeps the same state, so that best_model_path is the same everywhere. With replica
        # groups each group's rank zero decides the same (group 0 writes the files).
        decision: tuple[bool, str | None, str | None] | None = None
        if trainer.global_rank == 0:
            keep = top_k is None or (score is not None and (self.save_top_k == -1 or (
                self.save_top_k > 0 and (len(self.kept) < self.save_top_k or score > self._kth()[0]))))
            path = str(self._free_name(trainer, metrics, None)) if keep else None
            last = str(self._free_name(trainer, metrics, self.CHECKPOINT_NAME_LAST)) if self.save_last else None
            decision = (keep, path, last)
        if trainer.world_size > 1:
            decision = trainer.fabric.broadcast(decision, src=0)
        assert decision is not None
        keep, path, last = decision
        if self.verbose and trainer.is_global_zero and top_k and score is not None and self.monitor is not None:
            value = self._value(score)
            if keep:
                best = max([score] + [s for s, _ in self.kept])
                sys.stderr.write(f"[dltrain] Epoch {metrics['epoch']}, global step {metrics['step']}: "
                                 f"{self.monitor!r} reached {value:0.5f} (best {self._value(best):0.5f}), saving "
                                 f"model to {path!r} as top {self.save_top_k if self.save_top_k != -1 else 'all'}\n")
            else:
                sys.stderr.write(f"[dltrain] Epoch {metrics['epoch']}, global step {metrics['step']}: "
                                 f"{self.monitor!r} was not in top {self.save_top_k}\n")
        if not keep and last is None:
            return None
        # The state is updated before the write, so that the checkpoint names itself (best, last) in its state.
        evicted: list[str] = []
        if keep and top_k:
            assert path is not None and score is not None
            # In the order saved: among equal scores the older is the best and the first evicted (Lightning's).
            self.kept = [(s, p) for s, p in self.kept if p != path] + [(score, path)]
            while self.save_top_k != -1 and len(self.kept) > self.save_top_k:
                worst = self._kth()
                self.kept.remove(worst)
                evicted.append(worst[1])
            if self.monitor is not None:
                self.current_score = torch.tensor(self._value(score))
        previous_last = self.last_path
        if last is not None:
            self.last_path = last
        target = path if keep else last
        assert target is not None
        self._written.update(_norm(p) for p in (path, last) if p is not None)
        remote = _storage.is_remote(target)
        # On an object store, the parts the previous last.ckpt named: removed once nothing names them any more.
        old_last_parts = self._parts_of(last) if remote and last is not None and trainer.is_global_zero else None
        kept_now = [p for _, p in self.kept]

        def after() -> None:  # on global rank zero, once the checkpoint is complete (on the writer thread: async)
            if keep and last is not None:
                ckpt_io.link_atomic(target, last, self.storage_options)
            named = {self._parts_of(p) for p in [*kept_now, last] if p is not None} if remote else set()
            for old in evicted:
                self._remove(old, keep_parts={p for p in named if p is not None})
            if previous_last is not None and last is not None and _norm(previous_last) != _norm(last) and not any(
                    _norm(p) == _norm(previous_last) for p in kept_now):
                # "last" got a new name (a template in CHECKPOINT_NAME_LAST)
                self._remove(previous_last, keep_parts={p for p in named if p is not None})
            if old_last_parts is not None and old_last_parts not in named:
                from dltrain import _remote_checkpoint

                _remote_checkpoint.remove_parts(old_last_parts, self.storage_options)

        # Not kept: written straight to last.ckpt (atomically), so "last" never names a file removed later.
        trainer.save_checkpoint(target, self.save_weights_only, self.storage_options if remote else None,
                                background=background, after=after)
        self._last_saved_step = trainer.global_step
        if self.verbose and trainer.is_global_zero and (self.monitor is None or not top_k):
            sys.stderr.write(f"[dltrain] Epoch {metrics['epoch']}, global step {metrics['step']}: saved {target!r}\n")
        if trainer.is_global_zero:
            # The loggers hear of a save once it is complete, on the training thread: now, or (async_save) when the
            # save in flight is next waited for (the next save, the end of fit, teardown), if it succeeded.
            self._unannounced = list(trainer.loggers)
            if background is None:
                self._announce()
        return target

    def _parts_of(self, path: str) -> str | None:
        from dltrain import _remote_checkpoint

        return _remote_checkpoint.parts_of(path, self.storage_options)

    def save(self, trainer: TrainerView) -> None:
        """Write a checkpoint now, as a scheduled one would be (every rank calls it).

        Named, kept or rotated by the same rules, ``last`` updated; complete when this returns (also with
        ``async_save``). Used by `Preemption`.

        Args:
            trainer: the running trainer.
        """
        self._save(trainer)
        self.wait(trainer, "the preemption's exit")

    # ------------------------------------------------------------------ asynchronous saves
    def _background(self, trainer: TrainerView) -> AsyncSave | None:
        """The writer of asynchronous saves (``async_save=True``), made at the first save; None: synchronous."""
        if not self.async_save:
            return None
        if self._async is None:
            from dltrain._async_checkpoint import AsyncSave

            self._async = AsyncSave()
        return self._async

    def wait(self, trainer: TrainerView | None = None, reason: str = "going on", *, raise_error: bool = True) -> None:
        """Block until the asynchronous save in flight (if any) is complete; raise the error of a failed one.

        Args:
            trainer: the running trainer (unused; for the callers' symmetry).
            reason: what is waiting, for the log line that says how long it waited.
            raise_error: raise the error of a failed save; ``False``: log it only (while handling another
                error).
        """
        if self._async is not None:
            try:
                ok = self._async.writer.wait(reason, raise_error=raise_error)
            except BaseException:
                self._unannounced = []  # it failed: no logger hears of it
                raise
            if not ok:
                self._unannounced = []
        self._announce()

    def _announce(self) -> None:
        """Tell the loggers of the last complete save (``after_save_checkpoint``; global rank zero)."""
        loggers, self._unannounced = self._unannounced, []
        for logger in loggers:
            logger.after_save_checkpoint(self)

    @override
    def teardown(self, trainer: TrainerView, task: Task, stage: str) -> None:
        self.wait(trainer, f"the end of {getattr(stage, 'value', stage)}")

    def to_yaml(self, filepath: str | os.PathLike[str] | None = None) -> None:
        """Write ``best_k_models`` (path -> monitored value) as YAML, as Lightning's.

        Args:
            filepath: the file to write (default ``<dirpath>/best_k_models.yaml``).

        Raises:
            ConfigurationError: no ``filepath`` before ``fit`` has decided the folder.
        """
        import yaml

        if filepath is None:
            if self.dirpath is None:
                raise ConfigurationError("ModelCheckpoint.to_yaml(): the folder is not known before fit; pass filepath")
            filepath = _join(self.dirpath, "best_k_models.yaml")
        with open(filepath, "w", encoding="utf-8") as f:
            yaml.safe_dump({k: float(v) for k, v in self.best_k_models.items()}, f)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "kept": [[s, p] for s, p in self.kept],
            "last_path": self.last_path,
            "dirpath": str(self.dirpath) if self.dirpath is not None else None,
            "last_time_checked_ago": (time.monotonic() - self._last_time_checked
                                      if self._last_time_checked is not None else None),
            "defer_to_validation": self._defer_to_validation,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Checked against this fit's folder at the start of the fit (_resolve): entries elsewhere are forgotten.
        self.kept = [(float(s), str(p)) for s, p in state_dict.get("kept", [])]
        self.last_path = state_dict.get("last_path")
        self._restored_dirpath = state_dict.get("dirpath")
        self._defer_to_validation = bool(state_dict.get("defer_to_validation", False))
        self._resolved = False


def _fill(template: str, metrics: dict[str, Any], equals: str | None) -> str:
    """``template`` with every ``{name[:spec]}`` replaced by ``metrics[name]`` formatted with ``spec``.

    A missing name is 0; the value is preceded by ``name<equals>`` when ``equals`` is given.
    """

    def field(match: re.Match[str]) -> str:
        name, spec = match.group(1), match.group(2) or ""
        value = metrics.get(name, 0)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        try:
            text = format(value, spec)
        except (ValueError, TypeError) as err:
            raise ConfigurationError(
                f"ModelCheckpoint(filename={template!r}): {{{name}:{spec}}} cannot format {value!r} ({err})"
            ) from err
        return f"{name}{equals}{text}" if equals is not None else text

    return _FIELD_RE.sub(field, template)


# ---------------------------------------------------------------------- run folders
def _folder(path: str | os.PathLike[str]) -> Path | str:
    """A folder as dltrain handles it: a ``Path``, or a URL string for an object store.

    Never a ``Path`` for a URL: it would turn ``s3://`` into ``s3:/``.
    """
    if _storage.is_remote(path):
        return str(path).rstrip("/")
    return Path(os.path.expanduser(_storage.local_path(path)))


def _join(folder: Path | str, name: str) -> Path | str:
    return _storage.join(folder, name) if isinstance(folder, str) else folder / name


def _logger_run_dir(trainer: TrainerView) -> Path | str | None:
    """The first logger's folder of this run, ``<save_dir>/<name>/<version>`` (Lightning's rule).

    None without a logger, or when the logger has no version.
    """
    if not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    version = getattr(logger, "version", None)
    if version is None:
        return None
    save_dir = getattr(logger, "save_dir", None) or trainer.default_root_dir
    name = getattr(logger, "name", None)
    folder = version if isinstance(version, str) else f"version_{version}"
    if _storage.is_remote(save_dir):
        return _storage.join(str(save_dir), *([str(name)] if name else []), folder)
    return Path(save_dir, *([str(name)] if name else []), folder)


def run_folder_patterns(trainer: TrainerView) -> list[Path | str]:
    """Glob patterns of the folders where a default ModelCheckpoint of this Trainer's runs writes.

    The first logger's ``<save_dir>/<name>/*/checkpoints`` (else ``<default_root_dir>/checkpoints``, as
    Lightning) and ``<default_root_dir>/checkpoints/version_*`` (dltrain's earlier layout of runs without a
    logger). What `run_folders` searches and what a resume that finds nothing names.
    """
    patterns: list[Path | str] = []
    if _storage.is_remote(trainer.default_root_dir):  # URLs (an object store's "folders" are key prefixes)
        root = str(trainer.default_root_dir)
        if trainer.loggers:
            logger = trainer.loggers[0]
            save_dir = str(getattr(logger, "save_dir", None) or root)
            name = getattr(logger, "name", None)
            patterns.append(_storage.join(save_dir, *([str(name)] if name else []), "*", "checkpoints"))
        else:
            patterns.append(_storage.join(root, "checkpoints"))
        patterns.append(_storage.join(root, "checkpoints", "version_*"))
        return patterns
    if trainer.loggers:
        logger = trainer.loggers[0]
        save_dir = getattr(logger, "save_dir", None) or trainer.default_root_dir
        name = logger.name if logger.identity_resolved else "*"  # MLflow: its experiment id, once created
        patterns.append(Path(save_dir, *([str(name)] if name else []), "*", "checkpoints"))
    else:
        patterns.append(Path(trainer.default_root_dir) / "checkpoints")
    patterns.append(Path(trainer.default_root_dir) / "checkpoints" / "version_*")
    return patterns


def run_folders(trainer: TrainerView) -> list[Path | str]:
    """Every folder where a default ModelCheckpoint of this Trainer's runs may have written.

    Those of `run_folder_patterns` that exist, and ``<default_root_dir>/checkpoints`` (where runs without a logger
    write); without resolving the logger's version, which would claim a new one.
    """
    if _storage.is_remote(trainer.default_root_dir):
        return _remote_run_folders(trainer)
    folders: list[Path | str] = []
    for pattern in run_folder_patterns(trainer):
        assert isinstance(pattern, Path)
        found = (p for p in Path(pattern.anchor).glob(str(pattern.relative_to(pattern.anchor))) if p.is_dir())
        folders += sorted(p for p in found if pattern.name != "version_*" or _VERSION_RE.match(p.name))
    root = Path(trainer.default_root_dir) / "checkpoints"
    return folders if root in folders else [*folders, root]


def _remote_run_folders(trainer: TrainerView) -> list[Path | str]:
    """`run_folders` under an object store's ``default_root_dir`` (fresh listings)."""
    folders: list[Path | str] = []
    root = str(trainer.default_root_dir).rstrip("/")
    if trainer.loggers:
        logger = trainer.loggers[0]
        save_dir = str(getattr(logger, "save_dir", None) or root)
        name = getattr(logger, "name", None)
        base = _storage.join(save_dir, *([str(name)] if name else []))
        folders += sorted(_storage.join(base, _storage.basename(e["name"]), "checkpoints")
                          for e in _storage.listing(base) if e.get("type") == "directory")
    checkpoints = _storage.join(root, "checkpoints")
    folders += sorted(_storage.join(checkpoints, _storage.basename(e["name"])) for e in _storage.listing(checkpoints)
                      if e.get("type") == "directory" and _VERSION_RE.match(_storage.basename(e["name"])))
    return [*folders, checkpoints]


def _norm(path: str | os.PathLike[str]) -> str:
    return str(path) if _storage.is_remote(path) else os.path.abspath(os.fspath(path))


def _inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lies under ``folder`` (directly, or in a sub-folder a name with ``/`` made)."""
    if _storage.is_remote(path) or _storage.is_remote(folder):
        top = str(folder).rstrip("/")
        return _storage.is_remote(path) and str(path).startswith(top + "/")
    parent = os.path.realpath(os.path.dirname(os.path.abspath(os.fspath(path))))
    top = os.path.realpath(folder)
    return parent == top or parent.startswith(top + os.sep)
