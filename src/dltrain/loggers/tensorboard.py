"""`TensorBoardLogger`: scalars, hyperparameters and the model graph in TensorBoard event files.

Needs the ``tensorboard`` package (``pip install dltrain[tensorboard]``); it is imported when the logger is built.
"""

from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from dltrain.loggers.base import FolderLogger, ResumeFilter, yaml_safe

if TYPE_CHECKING:
    import torch
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["TensorBoardLogger"]

class TensorBoardLogger(FolderLogger):
    """Write to ``<save_dir>/<name>/version_<N>[/<sub_dir>]`` through ``torch.utils.tensorboard.SummaryWriter``.

    Lightning's ``TensorBoardLogger`` with the same arguments and folders: ``N`` is the next free version
    number (chosen, and the folder created, on the first write, so a logger built on every rank creates nothing
    on the ranks that never write); an ``int`` version names ``version_<version>``, a ``str`` is the folder name.

    ``log_hyperparams`` writes ``hparams.yaml`` in the version folder and TensorBoard's HPARAMS entry (with the
    metric ``hp_metric`` = -1 when ``default_hp_metric``, as Lightning does, so the HPARAMS tab shows the run).
    ``log_graph(model, input_array)`` writes the graph when the logger was built with ``log_graph=True``
    (Lightning's rule; ``input_array`` defaults to ``model.example_input_array``). ``experiment`` is the
    ``SummaryWriter``; extra keyword arguments go to it (e.g. ``flush_secs``, ``max_queue``).

    Resume: ``state_dict()`` is ``{"version": ...}``; ``load_state_dict`` continues writing in that folder, and
    does not write again what its event files hold (what a killed run flushed after its last checkpoint).

    Example:
        >>> logger = TensorBoardLogger("runs", name="mnist")
        >>> logger.log_metrics({"train/loss": 0.5}, step=10)  # runs/mnist/version_0/events.out.tfevents...
        >>> logger.experiment.add_histogram("weights", task.net.weight, 10)
    """

    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            import tensorboard  # noqa: F401  (SummaryWriter needs it; say so now rather than at the first write)
        except ImportError as err:
            raise ModuleNotFoundError(
                "TensorBoardLogger needs the tensorboard package: pip install 'dltrain[tensorboard]'"
            ) from err
        super().__init__(save_dir, name, version)
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._prefix = prefix
        self._sub_dir = os.fspath(sub_dir) if sub_dir is not None else None
        self._kwargs = kwargs
        self._experiment: SummaryWriter | None = None
        self._resume = ResumeFilter()
        self.hparams: dict[str, Any] = {}

    @property
    @override
    def log_dir(self) -> str:
        path = super().log_dir
        if self._sub_dir:
            path = os.path.join(path, self._sub_dir)
        return os.path.expandvars(os.path.expanduser(path))

    @property
    def sub_dir(self) -> str | None:
        """A folder inside the version folder that the event files go to (``None``: none)."""
        return self._sub_dir

    @property
    def experiment(self) -> SummaryWriter:
        """The ``SummaryWriter`` of this run (created, with its folder, on first use)."""
        if self._experiment is None:
            from torch.utils.tensorboard import SummaryWriter

            self._claim_dir()
            self._experiment = SummaryWriter(log_dir=self.log_dir, **self._kwargs)
        return self._experiment

    # ------------------------------------------------------------------ logging
    def _key(self, key: str) -> str:
        return f"{self._prefix}-{key}" if self._prefix else key

    def log_hyperparams(
        self, params: Mapping[str, Any] | Namespace, metrics: Mapping[str, float] | None = None
    ) -> None:
        """Merge ``params`` into ``hparams.yaml`` and write TensorBoard's HPARAMS entry.

        Nested mappings are flattened with ``/`` (``{"opt": {"lr": 0.1}}`` -> ``opt/lr``); values TensorBoard
        cannot show (lists, objects) are shown as their ``str``.
        """
        values = dict(vars(params) if isinstance(params, Namespace) else params)
        self.hparams.update(values)
        writer = self.experiment
        self._write_hparams_file()
        shown = {k: _scalar_or_str(v) for k, v in _flatten(values).items()}
        if metrics is None:
            if not self._default_hp_metric:
                return
            metrics = {"hp_metric": -1.0}
        from torch.utils.tensorboard.summary import hparams

        exp, ssi, sei = hparams(shown, dict(metrics))
        file_writer = writer.file_writer
        if file_writer is None:  # closed by finalize: reopen
            self._experiment = None
            file_writer = self.experiment.file_writer
        assert file_writer is not None
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)
        if self._resume.keep(0, dict(metrics)):  # not again when resuming a run that has it
            for key, value in metrics.items():
                writer.add_scalar(key, float(value), 0)

    def _write_hparams_file(self) -> None:
        import yaml

        path = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            yaml.safe_dump(yaml_safe(self.hparams), f, sort_keys=True)
        os.replace(tmp, path)

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is not None and not self._resume.keep(int(step), {self._key(k): v for k, v in metrics.items()}):
            return  # in the event files of the run this one resumes
        writer = self.experiment
        for key, value in metrics.items():
            if isinstance(value, Mapping):
                writer.add_scalars(self._key(key), {k: float(v) for k, v in value.items()}, step)
            else:
                writer.add_scalar(self._key(key), float(value), step)

    def log_graph(self, model: torch.nn.Module, input_array: Any = None) -> None:
        """Write ``model``'s graph traced on ``input_array`` (default ``model.example_input_array``).

        Does nothing unless the logger was built with ``log_graph=True`` (as in Lightning) or when there is no
        input to trace with.
        """
        if not self._log_graph:
            return
        if input_array is None:
            input_array = getattr(model, "example_input_array", None)
        if input_array is None:
            return
        self.experiment.add_graph(model, input_array)

    def save(self) -> None:
        """Flush the event file (and rewrite ``hparams.yaml``)."""
        if self._experiment is not None:
            self._experiment.flush()
            if self.hparams:
                self._write_hparams_file()

    def finalize(self, status: str) -> None:
        """Flush and close the event file; a later write opens a new one in the same folder."""
        if self._experiment is not None:
            self.save()
            self._experiment.close()
            self._experiment = None

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue in the folder of ``state_dict["version"]``, skipping what its event files already hold.

        TensorBoard merges the event files of a folder; `ResumeFilter` drops the rows already there.
        """
        if self._experiment is not None:
            self._experiment.close()
            self._experiment = None
        self._use_version(state_dict["version"])
        self._resume = ResumeFilter.from_rows(_scalar_rows(self.log_dir))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_experiment"] = None  # a SummaryWriter holds a thread and a file: not picklable
        return state


def _scalar_rows(folder: str) -> list[tuple[int, list[str]]]:
    """``(step, tags)`` of every scalar in the event files of ``folder``.

    A file cut short by a kill is read up to its last complete record.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    rows: list[tuple[int, list[str]]] = []
    if not os.path.isdir(folder):
        return rows
    for name in sorted(os.listdir(folder)):
        if "tfevents" not in name:
            continue
        for event in EventFileLoader(os.path.join(folder, name)).Load():
            tags = [v.tag for v in event.summary.value]
            if tags:
                rows.append((int(event.step), tags))
    return rows


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


def _scalar_or_str(value: Any) -> Any:
    import torch

    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)

