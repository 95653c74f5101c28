"""`ModelCheckpoint`: save checkpoints on a schedule, keep the best ones, and maintain ``last.ckpt``."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dltrain import checkpoint as ckpt_io
from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.task import Task
    from dltrain.trainer import Trainer

__all__ = ["ModelCheckpoint"]

_VERSION_RE = re.compile(r"^version_(\d+)$")


class ModelCheckpoint(Callback):
    """Save checkpoints every ``every_n_train_steps`` steps and/or every ``every_n_epochs`` epochs.

    Every write is atomic; ``last.ckpt`` is re-pointed only after the new checkpoint is complete, so it always
    loads. With ``monitor``, the ``save_top_k`` best checkpoints are kept; without it, the ``save_top_k`` newest.
    ``save_top_k=-1`` keeps all.

    Checkpoints belong to their run. The default folder is the run's own (Lightning's layout): the first logger's
    version folder plus ``checkpoints`` (``<default_root_dir>/logs/version_<N>/checkpoints`` with the default
    CSVLogger), or, without a logger, a new ``<default_root_dir>/checkpoints/version_<N>``. A resumed fit
    (``fit(ckpt_path=...)``) continues the run it resumes: the logger's version comes back from the checkpoint, and
    with it the folder. ``fit(ckpt_path="last")`` resumes the run whose checkpoint was written most recently.

    The callback deletes only files it wrote itself in its own folder: entries of a restored state that lie
    elsewhere (fine-tuning from another run's checkpoint) are forgotten, never removed, and a file of another run
    already in the folder is never replaced (the new one is named ``<name>-v1.ckpt``, as Lightning does;
    ``last-v1.ckpt`` likewise). At the start of a fit, temporary files that killed processes left while writing a
    checkpoint are removed.

    Attributes (Lightning's meanings):
        best_model_path: the best kept checkpoint (the newest when nothing is monitored); ``""`` before the first.
        best_model_score: the monitored value of ``best_model_path`` (a tensor), ``None`` without ``monitor``.
        best_k_models: kept checkpoint path -> monitored value (empty without ``monitor``).
        last_model_path: ``last.ckpt`` (what ``fit(ckpt_path="last")`` resumes from); ``""`` before the first.
        dirpath: the folder, once known (at the start of ``fit`` when not given).

    Args:
        dirpath: folder (default: the run's folder, above).
        filename: name pattern without extension, formatted with ``epoch``, ``step`` and logged metrics
            (``"{epoch}-{step}"`` gives ``epoch=3-step=1200.ckpt``).
        monitor: metric to rank checkpoints by, e.g. ``"val/loss"``.
        mode: ``"min"`` or ``"max"``.
        save_top_k: how many to keep.
        save_last: maintain ``last.ckpt`` (what ``fit(ckpt_path="last")`` resumes from).
        every_n_train_steps: save after every n optimizer steps (mid-epoch checkpoints).
        every_n_epochs: save at the end of every n epochs (0 disables).

    Example:
        >>> ckpt = ModelCheckpoint(monitor="val/acc", mode="max", save_top_k=2, every_n_train_steps=500)
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str = "{epoch}-{step}",
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool = True,
        every_n_train_steps: int = 0,
        every_n_epochs: int = 1,
    ) -> None:
        if mode not in ("min", "max"):
            raise ConfigurationError(f"ModelCheckpoint(mode={mode!r}): use 'min' or 'max'")
        if save_top_k < -1:
            raise ConfigurationError(f"ModelCheckpoint(save_top_k={save_top_k}): use -1 (all), 0 (none) or more")
        self._dirpath_given = Path(dirpath) if dirpath is not None else None
        self.dirpath = self._dirpath_given
        self.filename = filename
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.every_n_train_steps = every_n_train_steps
        self.every_n_epochs = every_n_epochs
        # (score, path) of the checkpoints we keep, lowest score first; scores are floats, higher is better (the
        # step when unmonitored, so the newest is "best").
        self.kept: list[tuple[float, str]] = []
        self.last_path: str | None = None  # the file "last" names; it exists whenever this is set
        self._last_saved_step = -1
        self._resolved = False  # dirpath decided for this fit, restored state checked against it
        self._restored_dirpath: str | None = None
        self._written: set[str] = set()  # files this callback wrote (normalised paths)

    @property
    def state_key(self) -> str:
        return f"ModelCheckpoint[{self.monitor or ''},{self.filename}]"

    # ------------------------------------------------------------------ Lightning's attributes
    @property
    def best_model_path(self) -> str:
        return self.kept[-1][1] if self.kept else ""

    @property
    def best_model_score(self) -> torch.Tensor | None:
        if self.monitor is None or not self.kept:
            return None
        return torch.tensor(self._value(self.kept[-1][0]))

    @property
    def best_k_models(self) -> dict[str, torch.Tensor]:
        if self.monitor is None:
            return {}
        return {p: torch.tensor(self._value(s)) for s, p in self.kept}

    @property
    def kth_best_model_path(self) -> str:
        return self.kept[0][1] if self.kept else ""

    @property
    def last_model_path(self) -> str:
        return self.last_path or ""

    def _value(self, score: float) -> float:
        """The monitored value behind a stored score (NaN was stored as the worst: +inf for min, -inf for max)."""
        return -score if self.mode == "min" else score

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, task: Task, stage: str) -> None:
        if stage == "fit":
            self._resolved = False

    def on_fit_start(self, trainer: Trainer, task: Task) -> None:
        # After a resume has restored the loggers (their version: the run's folder) and this callback's state.
        self._resolve(trainer)

    def on_train_batch_end(self, trainer: Trainer, task: Task, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = self.every_n_train_steps
        stepped = trainer.loop_state.stepped  # only right after an optimizer step (not inside a window)
        if n and stepped and trainer.global_step % n == 0 and trainer.global_step != self._last_saved_step:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: Trainer, task: Task) -> None:
        n = self.every_n_epochs
        if n and (trainer.current_epoch + 1) % n == 0 and trainer.global_step != self._last_saved_step:
            self._save(trainer)

    def on_fit_end(self, trainer: Trainer, task: Task) -> None:
        # The final state is always saved, whatever the schedule: it is what a user expects to find.
        if trainer.global_step != self._last_saved_step and (self.every_n_epochs or self.every_n_train_steps):
            self._save(trainer)

    # ------------------------------------------------------------------ the run's folder
    def _resolve(self, trainer: Trainer) -> None:
        """Decide the folder (global rank zero decides, every rank learns it) and keep only the restored entries
        that are this callback's own files in it; remove stale temporaries there."""
        decision: tuple[str, list[tuple[float, str]], str | None] | None = None
        if trainer.is_global_zero:
            folder = self._dirpath_given if self._dirpath_given is not None else self._default_dirpath(trainer)
            folder.mkdir(parents=True, exist_ok=True)
            ckpt_io.remove_stale_temporaries(folder)
            # A checkpoint is a file, or a directory (sharded, strategy="fsdp2").
            kept = [(float(s), str(p)) for s, p in self.kept if _inside(p, folder) and os.path.exists(p)]
            last = self.last_path if self.last_path and _inside(self.last_path, folder) else None
            decision = (str(folder), kept, last if last is not None and os.path.exists(last) else None)
        if trainer.world_size > 1:
            decision = trainer.fabric.broadcast(decision, src=0)
        assert decision is not None
        folder_name, self.kept, self.last_path = decision
        self.dirpath = Path(folder_name)
        self._written = {_norm(p) for _, p in self.kept} | ({_norm(self.last_path)} if self.last_path else set())
        self._restored_dirpath = None
        self._resolved = True

    def _default_dirpath(self, trainer: Trainer) -> Path:
        run = _logger_run_dir(trainer)
        if run is not None:
            return run / "checkpoints"
        root = Path(trainer.default_root_dir) / "checkpoints"
        restored = self._restored_dirpath
        if restored is not None and (_inside_tree(restored, root) and Path(restored).is_dir()):
            return Path(restored)  # continue the run this fit resumes
        if self.dirpath is not None:
            return self.dirpath  # an earlier fit of this Trainer
        return _claim_version(root)

    def last_folders(self, trainer: Trainer) -> list[Path]:
        """Where ``fit(ckpt_path="last")`` looks: the folder when given or known, else every run folder."""
        if self.dirpath is not None:
            return [self.dirpath]
        return run_folders(trainer)

    def _mine(self, path: str | os.PathLike[str]) -> bool:
        return _norm(path) in self._written

    def _free_name(self, path: Path) -> Path:
        """``path``, or ``<stem>-v<N>.ckpt`` when ``path`` is a file this callback did not write."""
        candidate, n = path, 0
        while candidate.exists() and not self._mine(candidate):
            n += 1
            candidate = path.with_name(f"{path.stem}-v{n}{path.suffix}")
        return candidate

    def _remove(self, path: str) -> None:
        if self.dirpath is None or not _inside(path, self.dirpath) or not self._mine(path):
            return  # never a file of another run, nor one outside this callback's folder
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(path) and not os.path.islink(path):  # a sharded checkpoint
                shutil.rmtree(path)
            else:
                os.remove(path)
        self._written.discard(_norm(path))

    # ------------------------------------------------------------------ saving
    def _score(self, trainer: Trainer) -> float:
        if self.monitor is None:
            return float(trainer.global_step)  # newest is "best" when nothing is monitored
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ConfigurationError(
                f"ModelCheckpoint(monitor={self.monitor!r}): no such metric was logged; logged metrics: "
                f"{sorted(trainer.callback_metrics)}"
            )
        score = float(value)
        if math.isnan(score):
            return -math.inf
        return -score if self.mode == "min" else score

    def _format(self, trainer: Trainer) -> str:
        values: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for k, v in trainer.callback_metrics.items():
            with contextlib.suppress(Exception):
                values[k] = float(v)
        name = self.filename
        for key, value in values.items():
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            # Metric names often hold "/" ("val/loss"): keep the file in dirpath.
            name = name.replace("{" + key + "}", f"{key.replace('/', '_')}={text}")
        return name + ".ckpt"

    def _save(self, trainer: Trainer) -> None:
        if not self._resolved:
            self._resolve(trainer)
        assert self.dirpath is not None
        score = self._score(trainer)  # on every rank: a missing metric raises everywhere
        # Global rank zero decides (it alone sees the files); every rank joins the save (it gathers their RNG
        # states and data positions) and keeps the same state, so that best_model_path is the same everywhere.
        decision: tuple[bool, float, str | None, str | None] | None = None
        if trainer.is_global_zero:
            keep = self.save_top_k == -1 or (
                self.save_top_k > 0 and (len(self.kept) < self.save_top_k or score > self.kept[0][0])
            )
            path = str(self._free_name(self.dirpath / self._format(trainer))) if keep else None
            last = str(self._free_name(self.dirpath / "last.ckpt")) if self.save_last else None
            decision = (keep, score, path, last)
        if trainer.world_size > 1:
            decision = trainer.fabric.broadcast(decision, src=0)
        assert decision is not None
        keep, score, path, last = decision
        if not keep and last is None:
            return
        # The state is updated before the write, so that the checkpoint names itself (best, last) in its state.
        evicted: list[str] = []
        if keep:
            assert path is not None
            kept = [(s, p) for s, p in self.kept if p != path] + [(score, path)]
            kept.sort(key=lambda sp: sp[0])
            while self.save_top_k != -1 and len(kept) > self.save_top_k:
                evicted.append(kept.pop(0)[1])
            self.kept = kept
        if last is not None:
            self.last_path = last
        target = path if keep else last
        assert target is not None
        self._written.update(_norm(p) for p in (path, last) if p is not None)
        # Not kept: written straight to last.ckpt (atomically), so "last" never names a file removed later.
        trainer.save_checkpoint(target)
        self._last_saved_step = trainer.global_step
        if not trainer.is_global_zero:
            return
        if keep and last is not None:
            ckpt_io.link_atomic(target, last)
        for old in evicted:
            self._remove(old)

    def save(self, trainer: Trainer) -> None:
        """Write a checkpoint now, as a scheduled one would be (every rank calls it): named, kept or rotated by the
        same rules, ``last`` updated. Used by `Preemption`."""
        self._save(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kept": [[s, p] for s, p in self.kept],
            "last_path": self.last_path,
            "dirpath": str(self.dirpath) if self.dirpath is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Checked against this fit's folder at the start of the fit (_resolve): entries elsewhere are forgotten.
        self.kept = [(float(s), str(p)) for s, p in state_dict.get("kept", [])]
        self.last_path = state_dict.get("last_path")
        self._restored_dirpath = state_dict.get("dirpath")
        self._resolved = False


# ---------------------------------------------------------------------- run folders
def _logger_run_dir(trainer: Trainer) -> Path | None:
    """The first logger's folder of this run, ``<save_dir>/<name>/<version>`` (Lightning's rule); None without a
    logger, or when the logger has no version."""
    if not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    version = getattr(logger, "version", None)
    if version is None:
        return None
    save_dir = getattr(logger, "save_dir", None) or trainer.default_root_dir
    name = getattr(logger, "name", None)
    folder = version if isinstance(version, str) else f"version_{version}"
    return Path(save_dir, *([str(name)] if name else []), folder)


def run_folder_patterns(trainer: Trainer) -> list[Path]:
    """Glob patterns of the folders where a default ModelCheckpoint of this Trainer's runs writes: the first
    logger's ``<save_dir>/<name>/*/checkpoints`` and ``<default_root_dir>/checkpoints/version_*`` (runs without a
    logger). What `run_folders` searches and what a resume that finds nothing names."""
    patterns: list[Path] = []
    if trainer.loggers:
        logger = trainer.loggers[0]
        save_dir = getattr(logger, "save_dir", None) or trainer.default_root_dir
        name = getattr(logger, "name", None)
        patterns.append(Path(save_dir, *([str(name)] if name else []), "*", "checkpoints"))
    patterns.append(Path(trainer.default_root_dir) / "checkpoints" / "version_*")
    return patterns


def run_folders(trainer: Trainer) -> list[Path]:
    """Every folder where a default ModelCheckpoint of this Trainer's runs may have written (without resolving
    the logger's version, which would claim a new one): those of `run_folder_patterns` and
    ``<default_root_dir>/checkpoints`` (dltrain's layout before checkpoints moved into run folders)."""
    folders: list[Path] = []
    for pattern in run_folder_patterns(trainer):
        found = (p for p in Path(pattern.anchor).glob(str(pattern.relative_to(pattern.anchor))) if p.is_dir())
        folders += sorted(p for p in found if pattern.name != "version_*" or _VERSION_RE.match(p.name))
    folders.append(Path(trainer.default_root_dir) / "checkpoints")
    return folders


def _claim_version(root: Path) -> Path:
    """Create and return ``root/version_<N>`` with the next free N (an exclusive mkdir: concurrent runs differ)."""
    root.mkdir(parents=True, exist_ok=True)
    while True:
        taken = [int(m.group(1)) for p in root.iterdir() if (m := _VERSION_RE.match(p.name))]
        candidate = root / f"version_{max(taken, default=-1) + 1}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate


def _norm(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


def _inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file directly in ``folder``."""
    return os.path.realpath(os.path.dirname(os.path.abspath(os.fspath(path)))) == os.path.realpath(folder)


def _inside_tree(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return real == top or real.startswith(top + os.sep)
