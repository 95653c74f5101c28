"""`MLFlowLogger`: metrics, hyperparameters, tags and checkpoints in an MLflow run that a resume continues.

Needs ``pip install 'dltrain[mlflow]'`` (``mlflow-skinny`` with SQLAlchemy and Alembic: MLflow's client and its
SQLite store, without the server, UI and data-science dependencies of the full ``mlflow`` package; the full package
works too). Imported when the logger is built.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from typing_extensions import override

from dltrain.loggers.base import Logger, ResumeFilter, checkpoint_metadata, checkpoints_to_log

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["MLFlowLogger"]

_LOCAL_FILE = "file:"
_SQLITE = "sqlite:///"
_BAD_KEY_CHARS = re.compile(r"[^a-zA-Z0-9_/. -]+")


class MLFlowLogger(Logger):
    """Log to an MLflow run, with Lightning's arguments.

    The store: ``tracking_uri`` (default: env ``MLFLOW_TRACKING_URI``), else an embedded SQLite store
    ``sqlite:///<save_dir>/mlflow.db`` with artifacts in ``<save_dir>/artifacts`` (MLflow 3 refuses its old
    folder store, Lightning's default, unless told otherwise; ``tracking_uri="file:./mlruns"`` still selects it).
    ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`` shows the runs.

    What goes where: ``log_metrics`` -> the run's metrics at each step (names with characters MLflow refuses are
    cleaned, with a warning, as Lightning does); ``log_hyperparams`` -> params (flattened with ``/``, values as
    strings cut at 250 characters); ``tags`` and ``run_name`` -> tags; checkpoints -> artifacts with
    ``log_model=True`` (the kept ones at the end of training; every one during training when ``save_top_k=-1``)
    or ``"all"`` (each as it is written), in a folder named after the file (plus ``checkpoint_path_prefix``).

    Identity: ``name`` is the experiment id, ``version`` the run id (Lightning's), so the default checkpoint
    folder is ``<save_dir>/<experiment id>/<run id>/checkpoints``. The run is created on first use.

    Resume: ``state_dict()`` holds the run id; ``load_state_dict`` continues that run (``fit(ckpt_path="last")``)
    and does not log again what the run already holds (`ResumeFilter`: each metric step once, also after a
    ``kill -9``, since every ``log_metrics`` is committed to the store before it returns).

    Args:
        experiment_name: experiment to log to (created when missing).
        run_name: the run's name (tag ``mlflow.runName``).
        tracking_uri: the store (see above).
        tags: tags of the run.
        save_dir: folder of the embedded store (used when ``tracking_uri`` is not given).
        log_model: ``False``, ``True`` or ``"all"`` (above).
        prefix: put before every metric name (joined with ``-``).
        artifact_location: where the experiment's artifacts go (when it is created).
        run_id: continue this existing run instead of creating one.
        synchronous: passed to MLflow's ``log_batch`` (``False``: MLflow logs in the background).
        checkpoint_path_prefix: folder prefix of the checkpoint artifacts.

    Example:
        >>> logger = MLFlowLogger(experiment_name="regression", save_dir="runs/mlruns")
        >>> trainer = dltrain.Trainer(max_epochs=1, logger=logger, log_every_n_steps=1, enable_progress_bar=False)
        >>> trainer.fit(task, train_loader)
        >>> history = logger.experiment.get_metric_history(logger.run_id, "train/loss")
        >>> len(history) > 0
        True
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        save_dir: str | None = "./mlruns",
        log_model: Literal[True, False, "all"] = False,
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
        checkpoint_path_prefix: str = "",
    ) -> None:
        try:
            import mlflow  # noqa: F401
        except ImportError as err:
            raise ModuleNotFoundError(
                "MLFlowLogger needs MLflow: pip install 'dltrain[mlflow]' (or the full mlflow package)") from err
        if log_model not in (True, False, "all"):
            raise ValueError(f"MLFlowLogger(log_model={log_model!r}): use False, True or 'all'")
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self._embedded = not tracking_uri
        self._save_dir_given = os.fspath(save_dir or "./mlruns")
        if self._embedded:
            tracking_uri = f"{_SQLITE}{os.path.abspath(self._save_dir_given)}/mlflow.db"
            if artifact_location is None:
                artifact_location = Path(os.path.abspath(self._save_dir_given), "artifacts").as_uri()
        assert tracking_uri is not None
        self._tracking_uri = tracking_uri
        self._experiment_name = experiment_name
        self._experiment_id: str | None = None
        self._run_name = run_name
        self._run_id = run_id
        self.tags = dict(tags) if tags else {}
        self._log_model = log_model
        self._prefix = prefix
        self._artifact_location = artifact_location
        self._log_batch_kwargs: dict[str, Any] = {} if synchronous is None else {"synchronous": synchronous}
        self._checkpoint_path_prefix = checkpoint_path_prefix
        self._client: MlflowClient | None = None
        self._initialized = False
        self._logged_checkpoints: dict[str, float] = {}  # path -> mtime when logged
        self._checkpoint_callback: Any = None
        self._resume = ResumeFilter()

    # ------------------------------------------------------------------ identity
    @property
    def experiment(self) -> MlflowClient:
        """The ``MlflowClient``, with the experiment and the run created (or found) on first use."""
        if self._initialized:
            assert self._client is not None
            return self._client
        client = self._make_client()
        if self._run_id is not None:
            self._experiment_id = client.get_run(self._run_id).info.experiment_id
        else:
            if self._experiment_id is None:
                found = client.get_experiment_by_name(self._experiment_name)
                if found is not None and found.lifecycle_stage != "deleted":
                    self._experiment_id = found.experiment_id
                else:
                    self._experiment_id = client.create_experiment(
                        name=self._experiment_name, artifact_location=self._artifact_location)
            tags = {str(k): str(v) for k, v in self.tags.items()}
            if self._run_name is not None:
                tags["mlflow.runName"] = self._run_name
            run = client.create_run(experiment_id=self._experiment_id, tags=tags, run_name=self._run_name)
            self._run_id = run.info.run_id
        self._initialized = True
        return client

    def _make_client(self) -> MlflowClient:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            if self._embedded:
                os.makedirs(self._save_dir_given, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self._tracking_uri)
        return self._client

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id (the run is created on first use)."""
        _ = self.experiment
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        """The MLflow experiment's id (created on first use when missing)."""
        _ = self.experiment
        return self._experiment_id

    @property
    def name(self) -> str | None:
        """The experiment id (Lightning's meaning)."""
        return self.experiment_id

    @property
    def version(self) -> str | None:
        """The run id (Lightning's meaning)."""
        return self.run_id

    @property
    def save_dir(self) -> str | None:
        """The local folder of the store (the embedded store's, or a ``file:`` URI's); None for a server."""
        if self._embedded:
            return self._save_dir_given
        if self._tracking_uri.startswith(_LOCAL_FILE):
            return self._tracking_uri[len(_LOCAL_FILE):]
        return None

    @property
    @override
    def identity_resolved(self) -> bool:
        return self._experiment_id is not None

    @property
    def tracking_uri(self) -> str:
        """The store this logger writes to (see the class docstring)."""
        return self._tracking_uri

    # ------------------------------------------------------------------ logging
    @override
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace) -> None:
        from mlflow.entities import Param

        values = _flatten(dict(vars(params) if isinstance(params, Namespace) else params))
        client, run_id = self.experiment, self._run_id
        assert run_id is not None
        existing = client.get_run(run_id).data.params  # a resumed run: params are write-once in MLflow
        # Params are write-once in MLflow: a resumed run keeps the first values (max_epochs raised to go on, ...).
        items = [Param(key=k, value=str(v)[:250]) for k, v in values.items() if k not in existing]
        for start in range(0, len(items), 100):
            client.log_batch(run_id=run_id, params=items[start:start + 100], **self._log_batch_kwargs)

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        step = int(step or 0)
        named: dict[str, float] = {}
        for key, value in metrics.items():
            if isinstance(value, str):
                warnings.warn(f"MLFlowLogger: discarding the metric {key}={value!r} (a string)", stacklevel=2)
                continue
            key = f"{self._prefix}{self.LOGGER_JOIN_CHAR}{key}" if self._prefix else key
            clean = _BAD_KEY_CHARS.sub("", key)
            if clean != key:
                warnings.warn(f"MLflow only allows '_', '/', '.' and ' ' special characters in metric names: {key!r} "
                              f"is logged as {clean!r}", RuntimeWarning, stacklevel=2)
            named[clean] = float(value)
        if not named or not self._resume.keep(step, named):
            return  # nothing, or in the run already (the run this one resumes logged it)
        stamp = int(time.time() * 1000)
        client = self.experiment
        assert self._run_id is not None
        client.log_batch(run_id=self._run_id, metrics=[Metric(key=k, value=v, timestamp=stamp, step=step)
                                                      for k, v in named.items()], **self._log_batch_kwargs)

    @override
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callback = checkpoint_callback

    def _log_checkpoints(self, callback: Any) -> None:
        """Log the callback's kept checkpoints (and ``last``) not logged yet, or changed since."""
        import tempfile

        import yaml

        client, run_id = self.experiment, self._run_id
        assert run_id is not None
        for path in checkpoints_to_log(callback, self._logged_checkpoints):
            mtime = os.path.getmtime(path)
            folder = f"{self._checkpoint_path_prefix}{Path(path).stem}"
            if os.path.isdir(path):  # a sharded checkpoint
                client.log_artifacts(run_id, path, folder)
            else:
                client.log_artifact(run_id, path, folder)
            metadata, aliases = checkpoint_metadata(callback, path)
            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, "metadata.yaml"), "w") as f:
                    yaml.safe_dump(metadata, f)
                with open(os.path.join(tmp, "aliases.txt"), "w") as f:
                    f.write(str(aliases))
                client.log_artifacts(run_id, tmp, folder)
            self._logged_checkpoints[path] = mtime

    def finalize(self, status: str) -> None:
        """Log the checkpoints (``log_model=True``) and end the run: FINISHED, FAILED or KILLED."""
        if not self._initialized:
            return
        if self._checkpoint_callback is not None:
            self._log_checkpoints(self._checkpoint_callback)
        mlflow_status = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}.get(status, "KILLED")
        assert self._run_id is not None
        self.experiment.set_terminated(self._run_id, mlflow_status)

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "experiment_id": self._experiment_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the run ``state_dict["run_id"]`` (running again), skipping the metric steps it holds."""
        self._run_id = state_dict["run_id"]
        self._experiment_id = state_dict.get("experiment_id")
        self._initialized = False
        client = self.experiment
        run = client.get_run(self._run_id)
        rows: list[tuple[int, list[str]]] = []
        for key in run.data.metrics:
            rows += [(m.step, [key]) for m in client.get_metric_history(self._run_id, key)]
        self._resume = ResumeFilter.from_rows(sorted(rows))
        if run.info.status != "RUNNING":
            client.update_run(self._run_id, status="RUNNING")


def _flatten(values: Mapping[str, Any], parent: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{parent}/{key}" if parent else str(key)
        if isinstance(value, Namespace):
            value = vars(value)
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out
