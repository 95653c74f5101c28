"""`Logger`: where logged metrics go. The Trainer calls loggers on global rank zero only.

Two pieces every logger shares live here: the run folder ``<save_dir>/<name>/version_<N>`` of the loggers that
write files (`FolderLogger`: Lightning's naming, the next free version claimed atomically on the first write), and
the rule a resumed run uses to log each step once (`ResumeFilter`).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

from typing_extensions import override

from dltrain import _storage
from dltrain.loggers._versions import claim_next_version, next_version

__all__ = ["FolderLogger", "Logger", "ResumeFilter", "checkpoint_metadata", "checkpoints_to_log", "yaml_safe"]


class Logger(ABC):
    """Base class of experiment loggers.

    The Trainer calls ``log_metrics`` every ``log_every_n_steps`` optimizer steps and at the end of every epoch,
    with plain Python floats (values are read from the device only then), and only on global rank zero.
    A logger keeps what it needs to continue the same run after a restart in ``state_dict`` (saved in checkpoints).

    Identity, as Lightning's: ``name`` and ``version`` place a run's default checkpoint folder,
    ``<save_dir>/<name>/<version>/checkpoints`` (``version_<N>`` for an int version; ``<default_root_dir>``
    when ``save_dir`` is None).

    Example:
        A logger implements ``log_metrics`` at the least:

        >>> class PrintLogger(Logger):
        ...     def log_metrics(self, metrics, step):
        ...         print(step, sorted(metrics))
        >>> trainer = dltrain.Trainer(max_epochs=1, logger=PrintLogger(), log_every_n_steps=2,
        ...                           enable_progress_bar=False, enable_model_summary=False,
        ...                           enable_checkpointing=False)
        >>> trainer.fit(task, train_loader, val_loader)
        2 ['epoch', 'train/loss']
        4 ['epoch', 'train/loss']
        4 ['epoch', 'val/loss']
    """

    @property
    def name(self) -> str | None:
        """The experiment's name (the class name unless a logger says otherwise)."""
        return type(self).__name__

    @property
    def version(self) -> str | int | None:
        """The run's version within the experiment (``None``: the logger has none)."""
        return None

    @property
    def log_dir(self) -> str | None:
        """Folder of this run's files, if the logger writes any."""
        return None

    @property
    def identity_resolved(self) -> bool:
        """Whether ``name`` can be read without creating anything (MLflow creates its experiment and run first)."""
        return True

    @property
    def save_dir(self) -> str | None:
        """Root folder of the logger's files (Lightning's name); see the class docstring."""
        return None

    @property
    def experiment(self) -> Any:
        """The object behind the logger, for what dltrain does not wrap (Lightning's name).

        That is wandb's run, TensorBoard's ``SummaryWriter``, MLflow's ``MlflowClient``; loggers without one
        (CSV) return themselves.
        """
        return self

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Record the run's hyperparameters (the task's ``hparams`` and the Trainer's settings)."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` at optimizer step ``step``. Steps only grow within a run, also across restarts."""

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called by `ModelCheckpoint` after each checkpoint it writes (Lightning's hook; MLflow logs the files)."""

    def save(self) -> None:
        """Put everything logged so far on disk.

        Called on global rank zero right after every checkpoint is written: what a checkpoint covers must
        survive a ``kill -9`` that comes after it.
        """

    def finalize(self, status: str) -> None:
        """Close the run; ``status`` is ``"success"``, ``"failed"`` or ``"interrupted"``."""
        self.save()

    def state_dict(self) -> dict[str, Any]:
        """What the logger needs to continue the same run after a restart (saved in checkpoints)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the run described by ``state_dict`` (called before the first ``log_metrics`` on resume)."""


def checkpoints_to_log(callback: Any, logged: dict[str, float]) -> list[str]:
    """The checkpoint files of a `ModelCheckpoint` that a ``log_model`` logger has not logged yet, oldest first.

    What a logger uploads with ``log_model``, as Lightning's loggers do: the kept checkpoints and ``last``, each
    when it is new or was rewritten since it was logged (``logged``: path -> modification time when logged; the
    caller records each path it logs there). A file removed since is skipped.
    """
    paths = [p for _, p in getattr(callback, "kept", [])]
    if callback.last_model_path:
        paths.append(callback.last_model_path)
    found = [(os.path.getmtime(p), p) for p in dict.fromkeys(paths) if os.path.exists(p)]
    return [p for mtime, p in sorted(found) if logged.get(p) != mtime]


def checkpoint_metadata(callback: Any, path: str) -> tuple[dict[str, Any], list[str]]:
    """The metadata and aliases a logger attaches to an uploaded checkpoint, as Lightning's.

    Metadata: its monitored score, file name and the callback's settings; aliases: ``latest``, plus ``best``
        for
    the best checkpoint.
    """
    score = callback.best_k_models.get(path)
    metadata = {"score": float(score) if score is not None else None, "original_filename": os.path.basename(path),
                type(callback).__name__: {k: getattr(callback, k, None) for k in (
                    "monitor", "mode", "save_last", "save_top_k", "save_weights_only", "every_n_train_steps",
                    "every_n_epochs")}}
    aliases = ["latest", "best"] if path == callback.best_model_path else ["latest"]
    return metadata, aliases


class ResumeFilter:
    """What a resumed run must not log again: the rows its killed predecessor already put on disk.

    A resumed run restarts at its checkpoint and logs again every step after it. The killed run may have
    written some of those steps already (after the checkpoint, before the kill), and a step's values come in
    several calls (the step's training values, then validation values and epoch aggregates at the same step),
    each one row. So a row is dropped when its step is before the last step on disk, or is that step and holds
    a value already written at it; every other row is logged whole. Then the history of a killed and resumed
    run equals the uninterrupted run's: each row once, none missing.

    Args:
        last_step: the last step on disk (``None``: nothing is).
        keys_at_last: the keys written at that step.

    Example:
        >>> on_disk = ResumeFilter.from_rows([(10, ["train/loss"]), (20, ["train/loss"]), (20, ["val/loss"])])
        >>> on_disk.keep(10, {"train/loss": 0.5})  # before the last step on disk
        False
        >>> on_disk.keep(20, {"val/loss": 0.4})  # at the last step, already written there
        False
        >>> on_disk.keep(20, {"epoch": 1, "lr": 0.1})  # at the last step, not written there yet
        True
        >>> on_disk.keep(30, {"train/loss": 0.3})
        True
    """

    def __init__(self, last_step: int | None = None, keys_at_last: Iterable[str] = ()) -> None:
        self.last_step = last_step
        self.keys_at_last = set(keys_at_last)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, Iterable[str]]]) -> ResumeFilter:
        """From the ``(step, keys)`` rows already on disk."""
        last: int | None = None
        keys: set[str] = set()
        for step, names in rows:
            if last is None or step > last:
                last, keys = step, set(names)
            elif step == last:
                keys.update(names)
        return cls(last, keys)

    def keep(self, step: int, metrics: Mapping[str, Any]) -> bool:
        """Whether the row ``metrics`` logged at ``step`` is not on disk yet."""
        if self.last_step is None or step > self.last_step:
            return True
        # At the last step: a row none of whose values is there yet (``epoch``, which the Trainer adds to every
        # row, does not count).
        return step == self.last_step and not (set(metrics) - {"epoch"}) & self.keys_at_last


class FolderLogger(Logger):
    """A logger that writes files in ``<save_dir>/<name>/<version folder>`` (CSV, TensorBoard): Lightning's layout.

    The next free version is resolved without creating anything and claimed (an exclusive ``mkdir``, so two
    runs started at once differ) on the first write: a logger built on every rank creates nothing on the ranks
    that never write.

    ``save_dir`` may be a URL of an object store (``s3://bucket/runs``): the folders are then key prefixes, joined
    as URLs; the version is the next free number among the store's ``version_*`` prefixes, claimed by a conditional
    PUT of the marker object ``version_<N>/.dltrain-run`` (`dltrain.loggers._versions`), and a subclass writes whole
    objects (`remote`).

    Args:
        save_dir: the root folder, or a URL of an object store.
        name: the experiment's folder under it (``None`` or ``""``: none).
        version: an ``int`` (folder ``version_<version>``), a ``str`` (the folder name), or ``None`` for the
            next free number.

    Example:
        >>> import os
        >>> from dltrain.loggers import CSVLogger
        >>> logger = CSVLogger("logs", name="exp")  # a FolderLogger
        >>> logger.version, logger.log_dir, os.path.exists("logs")  # nothing created yet
        (0, 'logs/exp/version_0', False)
        >>> logger.log_metrics({"loss": 1.0}, step=0)
        >>> logger.save()
        >>> sorted(os.listdir(logger.log_dir)), CSVLogger("logs", name="exp").version
        (['hparams.yaml', 'metrics.csv'], 1)
    """

    def __init__(self, save_dir: str | os.PathLike[str], name: str | None, version: int | str | None) -> None:
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._claimed = False

    @property
    @override
    def name(self) -> str:
        return self._name

    @property
    @override
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        """``<save_dir>/<name>`` (``save_dir`` when ``name`` is empty)."""
        return self._join(self._save_dir, self._name) if self._name else self._save_dir

    @property
    def remote(self) -> bool:
        """Whether the folder is on an object store (no appends, no renames: whole objects are written)."""
        return _storage.is_remote(self._save_dir)

    def _join(self, folder: str, name: str) -> str:
        return _storage.join(folder, name) if self.remote else os.path.join(folder, name)

    @property
    def version(self) -> int | str:
        """The version; resolving it (the next free number) does not create the folder."""
        if self._version is None:
            self._version = next_version(self.root_dir)
        return self._version

    @property
    @override
    def log_dir(self) -> str:
        version = self.version
        return self._join(self.root_dir, version if isinstance(version, str) else f"version_{version}")

    def _claim_dir(self) -> None:
        """Create the run folder, claiming the next free version when none was given, resolved or restored."""
        if self._claimed:
            return
        if self._version is None:
            self._version = claim_next_version(self.root_dir)
        if not self.remote:  # a store's prefix exists once an object is written under it
            os.makedirs(self.log_dir, exist_ok=True)
        self._claimed = True

    def _use_version(self, version: int | str) -> None:
        """Continue in ``version``'s folder (a resumed run)."""
        self._version = version
        self._claimed = False


def yaml_safe(value: Any) -> Any:
    """``value`` with what YAML's safe dumper cannot write turned into its ``repr`` (namespaces become dicts)."""
    from argparse import Namespace

    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): yaml_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [yaml_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)
