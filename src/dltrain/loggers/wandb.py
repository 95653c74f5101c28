"""`WandbLogger`: Weights & Biases runs that continue across restarts without a repeated step."""

from __future__ import annotations

import json
import os
import secrets
import string
from collections.abc import Mapping
from typing import Any, Literal

from typing_extensions import override

from dltrain.errors import ConfigurationError
from dltrain.loggers.base import Logger, ResumeFilter, checkpoint_metadata, checkpoints_to_log

__all__ = ["WandbLogger"]

_ID_ALPHABET = string.ascii_lowercase + string.digits


class WandbLogger(Logger):
    """Log to a W&B run, opened lazily (``wandb.init``) on the first metrics, on the rank that logs.

    The run id is chosen at construction (8 random characters, like wandb's own) unless ``id`` is given, so it is
    known before the run starts: it is part of ``state_dict()`` (saved in checkpoints) and of a small record file
    ``<save_dir>/wandb/dltrain-run-<id>.json`` (``{"id": ..., "last_step": ...}``) that is updated before every
    ``run.log``. On resume, ``load_state_dict`` re-opens the same run (``resume="allow"``) and drops every step
    ``<=`` the last step logged before the restart (from the record file, which is newer than the checkpoint), so
    W&B sees each step once and in increasing order even after a ``kill -9``.

    Offline runs and kills: wandb writes an offline run's ``.wandb`` file in 32 KiB blocks and completes it only
    when the run finishes, so a killed offline run kept few or none of its rows (every killed launch in our tests:
    none). ``save()``, which the Trainer calls right after every checkpoint, therefore finishes the offline run
    (the one way the SDK commits that file) and the next ``log_metrics`` continues it under the same id
    (``resume="allow"``), in a new ``offline-run-*`` folder: ``wandb sync`` uploads every folder into the one run.
    What was logged up to a checkpoint is then on disk; only rows logged after the last checkpoint of a killed run
    may be lost (never repeated). Hold no reference to ``experiment`` across checkpoints in offline mode: read
    ``logger.experiment`` when you log (it is the open run). Online runs stream to the server and are not
    finished at checkpoints.

    Identity, as Lightning's: ``name`` is the project (``project``, else env ``WANDB_PROJECT``, else
    ``"lightning_logs"``) and ``version`` the run id, so the default checkpoint folder is
    ``<save_dir>/<project>/<id>/checkpoints``.

    Checkpoints as artifacts (``log_model``, Lightning's): ``True`` logs the checkpoints `ModelCheckpoint` keeps,
    and ``last``, when training ends successfully (each as it is written when ``save_top_k=-1``); ``"all"`` logs
    each as it is written. Each is a ``model`` artifact named ``checkpoint_name`` (default ``model-<run id>``)
    holding ``model.ckpt`` (a sharded checkpoint: its folder), with the monitored score and the callback's
    settings as metadata and the aliases ``latest`` (and ``best``). ``offline=True`` with ``log_model`` is refused,
    as in Lightning; with ``WANDB_MODE=offline`` wandb keeps the artifacts in the offline run for ``wandb sync``.

    Nothing is read from or written about the environment by this class but ``WANDB_PROJECT`` (read): the API key
    (if any) is read by wandb itself, and offline mode needs none.

    Args:
        name: display name of the run.
        save_dir: folder under which wandb writes its ``wandb/`` directory (default ``"."``).
        version: the run id to create or continue (Lightning's name for ``id``).
        offline: ``mode="offline"``: write locally only (``wandb sync`` uploads later); no network, no key.
        dir: same as ``save_dir`` (used when ``save_dir`` is not given).
        id: same as ``version``.
        anonymous: ``True``: ``wandb.init(anonymous="allow")``.
        project: W&B project (above).
        log_model: ``False``, ``True`` or ``"all"`` (above).
        experiment: a run the caller started (``wandb.init``) to log to; this logger then neither finishes it
            nor, offline, commits it at checkpoints (the caller owns it).
        prefix: put before every metric name (joined with ``-``).
        checkpoint_name: name of the checkpoint artifacts.
        add_file_policy: ``"mutable"`` (wandb copies the file before upload) or ``"immutable"``.
        init_kwargs: passed to ``wandb.init`` (``entity``, ``tags``, ``group``, ``settings``, ...).

    Example:
        >>> logger = WandbLogger(project="mnist", offline=True, save_dir="runs")
        >>> logger.log_metrics({"train/loss": 0.5}, step=10)  # starts the run here
    """

    RECORD_FILE = "dltrain-run-{id}.json"
    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike[str] | None = None,
        version: str | None = None,
        offline: bool = False,
        dir: str | os.PathLike[str] | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: Literal[True, False, "all"] = False,
        experiment: Any = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        add_file_policy: Literal["mutable", "immutable"] = "mutable",
        **init_kwargs: Any,
    ) -> None:
        if log_model not in (True, False, "all"):
            raise ConfigurationError(f"WandbLogger(log_model={log_model!r}): use False, True or 'all'")
        if offline and log_model:
            raise ConfigurationError(
                f"WandbLogger(log_model={log_model}, offline=True): checkpoints cannot be uploaded in offline mode "
                "(Lightning refuses it too); set offline=False to log them (with WANDB_MODE=offline, wandb keeps "
                "them in the offline run for `wandb sync`)")
        if add_file_policy not in ("mutable", "immutable"):
            raise ConfigurationError(
                f"WandbLogger(add_file_policy={add_file_policy!r}): use 'mutable' or 'immutable'")
        if version is not None and id is not None and version != id:
            raise ConfigurationError(f"WandbLogger(version={version!r}, id={id!r}): two run ids; give one")
        self._project = project or os.environ.get("WANDB_PROJECT") or "lightning_logs"
        self._name = name
        self._save_dir = os.fspath(save_dir if save_dir is not None else dir if dir is not None else ".")
        self._offline = offline
        self._owns_run = experiment is None
        self._run: Any = experiment
        given_id = experiment.id if experiment is not None else version or id
        self._id = given_id or "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
        self._init_kwargs = init_kwargs
        if anonymous:
            self._init_kwargs.setdefault("anonymous", "allow")
        self._log_model = log_model
        self._prefix = prefix
        self._checkpoint_name = checkpoint_name
        self._add_file_policy = add_file_policy
        self._logged_checkpoints: dict[str, float] = {}  # path -> mtime when logged as an artifact
        self._checkpoint_callbacks: dict[int, Any] = {}  # log_model=True: logged at the end
        self._pending_config: dict[str, Any] = {}
        self._last_step: int | None = None  # last step sent to wandb (or by the run this one resumes)
        self._skip_until: int | None = None
        self._row_step: int | None = None  # the step being logged: sent to wandb once a later step begins
        self._row: dict[str, float] = {}
        self._open_rows = False  # the open run holds rows not yet committed to disk
        self._committed = False  # save() finished an offline run segment
        self._recommit = False  # commit again once the step buffered at a checkpoint is sent
        self._pending: list[Any] | None = None  # [step, metrics] buffered at the last checkpoint (record file)
        self._resend: tuple[int, dict[str, float]] | None = None  # a killed run's pending step, sent on resume
        self._resume: ResumeFilter | None = None  # offline resume: the rows already in the run's files

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        """The project (Lightning's); the run's display name is ``experiment.name``."""
        return self._project

    @property
    def version(self) -> str:
        """The run id."""
        return self._id

    @property
    @override
    def log_dir(self) -> str:
        return os.path.join(self._save_dir, "wandb")

    @property
    @override
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def record_file(self) -> str:
        """The file that records the run id and its last logged step, for a resume."""
        return os.path.join(self.log_dir, self.RECORD_FILE.format(id=self._id))

    @property
    def experiment(self) -> Any:
        """The ``wandb.Run``, started on first access."""
        if self._run is None:
            self._run = self._init_run()
        return self._run

    def _init_run(self) -> Any:
        import wandb  # imported here: `import dltrain` must not pay for wandb

        os.makedirs(self.log_dir, exist_ok=True)
        kwargs: dict[str, Any] = {
            "project": self._project,
            "name": self._name,
            "dir": self._save_dir,
            "id": self._id,
            # "allow": continue the run if it exists (resume, or fit then test in one process), else create it.
            "resume": "allow",
            # Each logger owns its run; a run the user started with wandb.init() is left alone.
            "reinit": "create_new",
        }
        if self._offline:
            kwargs["mode"] = "offline"
        if self._pending_config:
            kwargs["config"] = dict(self._pending_config)
        kwargs.update(self._init_kwargs)
        run = wandb.init(**kwargs)
        self._pending_config.clear()
        return run

    # ------------------------------------------------------------------ logging
    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Update the run's config; kept until the run starts, so a resume can still pick the run id."""
        if self._run is None:
            self._pending_config.update(params)
        else:
            self._run.config.update(dict(params), allow_val_change=True)

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        step = int(step)
        if self._prefix:
            metrics = {f"{self._prefix}{self.LOGGER_JOIN_CHAR}{k}": v for k, v in metrics.items()}
        if self._resend is not None:
            self._send_resend()
        if self._resume is not None and not self._resume.keep(step, metrics):
            return  # in the run's files already (offline resume)
        if self._skip_until is not None and step <= self._skip_until:
            return  # logged by the run this one resumes: W&B keeps one row per step
        if self._last_step is None or step > self._last_step:
            self._last_step = step
            # Recorded before the row goes to wandb: if the process dies in between, the step is lost rather than
            # repeated.
            self._write_record()
        if self._row_step is not None and step != self._row_step:
            self._send_row(commit=self._recommit)
        if self._row_step is None:
            self._row_step = step
        self._row.update(metrics)

    def save(self) -> None:
        """Offline: commit what was logged so far to disk by finishing the run; the next log continues it.

        The step being logged goes to wandb only once complete (a later step begins, or the run ends), so that no
        step is split over two run segments. Its part logged before the checkpoint waits in the record file, and
        a resumed run sends it if this one is killed before; once complete it is sent and committed at once.
        """
        self._commit()
        if self._row_step is not None:
            self._pending = [self._row_step, dict(self._row)]
            self._recommit = True
            self._write_record()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """``log_model``: log the new checkpoints now (``"all"``, or ``save_top_k=-1``), or at the end (``True``)."""
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback

    def _log_checkpoints(self, callback: Any) -> None:
        import wandb

        for path in checkpoints_to_log(callback, self._logged_checkpoints):
            metadata, aliases = checkpoint_metadata(callback, path)
            if self._checkpoint_name is None:
                self._checkpoint_name = f"model-{self._id}"
            artifact = wandb.Artifact(name=self._checkpoint_name, type="model", metadata=metadata)
            if os.path.isdir(path):  # a sharded checkpoint: its folder
                artifact.add_dir(path, name="model.ckpt", policy=self._add_file_policy)
            else:
                artifact.add_file(path, name="model.ckpt", policy=self._add_file_policy)
            self.experiment.log_artifact(artifact, aliases=aliases)
            self._open_rows = True  # committed with the run's rows (offline: at the next checkpoint or the end)
            self._logged_checkpoints[path] = os.path.getmtime(path)

    def finalize(self, status: str) -> None:
        """Finish the run: ``exit_code`` 0 for ``"success"``, 1 otherwise (failed or interrupted).

        With ``log_model=True``, the checkpoints are logged first, on success only (Lightning's). A run given as
        ``experiment`` is left open (its owner finishes it).
        """
        if self._resend is not None:
            self._send_resend()
        if self._row_step is not None:
            self._send_row(commit=False)  # the finish below commits it
        if status == "success":
            for callback in self._checkpoint_callbacks.values():
                self._log_checkpoints(callback)
        if not self._owns_run:
            return
        if self._run is None and (self._pending_config or (self._committed and status != "success")):
            # Start the run so that its config is kept, or, after save() finished it, so that it ends failed.
            self.experiment  # noqa: B018
        if self._run is not None:
            self._run.finish(exit_code=0 if status == "success" else 1)
            self._run = None  # a later stage (test after fit) re-opens the same run id
            self._open_rows = False

    def _send_row(self, commit: bool) -> None:
        """Send the buffered step (complete: a later step has begun, or the run ends); commit it when asked."""
        assert self._row_step is not None
        step, row = self._row_step, dict(self._row)
        self._row_step, self._row, self._recommit = None, {}, False
        if self._pending is not None and not self._is_offline():
            self._pending = None
            self._write_record()  # the record stops holding it first: lost rather than repeated
        self.experiment.log(row, step=step)
        self._open_rows = True
        if commit:
            self._commit()

    def _send_resend(self) -> None:
        """Send (and commit) the checkpointed part of the step a killed run had not sent yet."""
        assert self._resend is not None
        step, row = self._resend
        self._resend, self._pending = None, None
        self._write_record()
        self.experiment.log(row, step=step)
        self._open_rows = True
        self._commit()

    def _commit(self) -> None:
        """Finish an offline run that holds uncommitted rows (the SDK then completes its ``.wandb`` file)."""
        run = self._run
        if run is None or not self._owns_run or not self._open_rows or run.settings.mode != "offline":
            return
        run.finish(exit_code=0)
        self._run = None
        self._open_rows = False
        self._committed = True
        if self._pending is not None and self._row_step is None:
            self._pending = None  # the step it held is in the committed file now
            self._write_record()

    def _is_offline(self) -> bool:
        mode = self._init_kwargs.get("mode") or os.environ.get("WANDB_MODE")
        return self._offline or mode in ("offline", "dryrun")

    def _rows_on_disk(self) -> list[tuple[int, list[str]]]:
        """``(step, keys)`` of the rows every offline segment of this run holds on disk (oldest first)."""
        import glob

        from dltrain._compat import wandb_offline_steps

        rows: list[tuple[int, list[str]]] = []
        for path in glob.glob(os.path.join(self.log_dir, "offline-run-*", f"run-{self._id}.wandb")):
            rows += wandb_offline_steps(path)
        return rows

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"id": self._id, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the run ``state_dict["id"]``; steps up to the last one it logged are dropped."""
        new_id = state_dict["id"]
        if self._run is not None and self._run.id != new_id:
            self.finalize("success")
        self._id = new_id
        last = state_dict.get("last_step")
        record = self._read_record()
        if record is not None and record.get("last_step") is not None:
            last = record["last_step"] if last is None else max(last, int(record["last_step"]))
        pending = record.get("pending") if record is not None else None
        if self._is_offline():
            # What a killed offline run logged after its last commit is not on disk: the rows that are decide
            # what this run skips, and the rest is logged again (the history then equals the uninterrupted run's).
            self._resume = ResumeFilter.from_rows(self._rows_on_disk())
            done = self._resume.last_step
            self._last_step, self._skip_until = done, None
            if pending is not None and (done is None or int(pending[0]) > done):
                # The part of a step logged before the checkpoint (this run logs the rest): one row with it.
                self._row_step, self._row = int(pending[0]), {str(k): float(v) for k, v in pending[1].items()}
                self._pending = pending
            else:
                self._pending = None
            return
        if pending is not None:
            self._resend = (int(pending[0]), {str(k): float(v) for k, v in pending[1].items()})
            self._pending = pending  # kept in the record until sent
        self._last_step = last
        self._skip_until = last

    def _write_record(self) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        path = self.record_file
        tmp = f"{path}.tmp"
        record: dict[str, Any] = {"id": self._id, "last_step": self._last_step}
        if self._pending is not None:
            record["pending"] = self._pending
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, path)

    def _read_record(self) -> dict[str, Any] | None:
        try:
            with open(self.record_file, encoding="utf-8") as f:
                record = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return record if record.get("id") == self._id else None
