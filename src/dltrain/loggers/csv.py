"""`CSVLogger`: metrics in a CSV file, hyperparameters in YAML (as Lightning's). The default logger."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from dltrain import _storage
from dltrain.loggers.base import FolderLogger, ResumeFilter, yaml_safe

__all__ = ["CSVLogger"]

class CSVLogger(FolderLogger):
    """Write metrics to ``<save_dir>/<name>/version_<N>/metrics.csv`` and hparams to ``hparams.yaml`` there.

    File format: "wide" CSV, one row per ``log_metrics`` call, columns in sorted order (``step`` among them, as
    Lightning's); a cell is empty when the row did not log that metric. When a new metric name appears, the file is
    rewritten once with the extended header (as Lightning's ``CSVLogger`` does), so the file is always valid CSV that
    ``pandas.read_csv`` / ``csv.DictReader`` read directly. ``hparams.yaml`` is the file Lightning's
    ``load_from_checkpoint(hparams_file=...)`` reads (values YAML cannot hold are written as their ``repr``).

    ``N`` is the next free version number, chosen (and the folder created) on the first write, so a logger
    constructed on every rank creates nothing on the ranks that never write. Rows are buffered and written every
    ``flush_every`` calls and on ``save()``/``finalize()``.

    Resume: ``state_dict()`` is ``{"version": ...}``; ``load_state_dict`` continues in the same folder and does
    not write again what its ``metrics.csv`` already holds (`ResumeFilter`: the steps a killed run re-trains after
    restarting from its last checkpoint keep their first rows, and the rows it had not written yet are written),
    so the file of a killed and resumed run equals the uninterrupted run's.

    On an object store (``save_dir="s3://bucket/runs"``, as with ``Trainer(default_root_dir="s3://...")``) a file
    cannot be appended to: every write replaces ``metrics.csv`` with the whole file (one PUT, so a reader sees the
    old or the new one), its rows kept in memory; the version is the next free number among the store's
    ``version_*`` prefixes (`FolderLogger`).

    Args:
        save_dir: root folder of the logs (usually the Trainer's ``default_root_dir``).
        name: sub-folder of ``save_dir`` grouping the versions of one experiment.
        version: an ``int`` (folder ``version_<version>``), a ``str`` (used as the folder name), or ``None``
            for the next free number.
        flush_every: write buffered rows every this many ``log_metrics`` calls (1: at every call).
        prefix: put before every metric name (joined with ``-``, as Lightning).
        flush_logs_every_n_steps: Lightning's name for ``flush_every``.

    Example:
        >>> logger = CSVLogger("runs", name="mnist")
        >>> logger.log_metrics({"train/loss": 0.5}, step=10)  # runs/mnist/version_0/metrics.csv
    """

    METRICS_FILE = "metrics.csv"
    HPARAMS_FILE = "hparams.yaml"
    NAME_HPARAMS_FILE = HPARAMS_FILE  # Lightning's name

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str = "lightning_logs",
        version: int | str | None = None,
        flush_every: int = 1,
        prefix: str = "",
        flush_logs_every_n_steps: int | None = None,
    ) -> None:
        super().__init__(save_dir, name, version)
        # Lightning's spelling of flush_every (it counts log_metrics calls too).
        self._flush_every = max(1, int(flush_logs_every_n_steps if flush_logs_every_n_steps else flush_every))
        self._prefix = prefix
        self._columns: list[str] = []  # metric columns, without "step"
        self._header: list[str] = []  # the header of metrics.csv on disk, in its order (older files: "step" first)
        self._rows: list[dict[str, Any]] = []  # buffered, not yet on disk
        self._resume = ResumeFilter()  # what the run this one resumes already wrote
        self._written: list[dict[str, Any]] = []  # on an object store: every row written (each write is whole)
        self._hparams: dict[str, Any] = {}  # on an object store: hparams.yaml as written
        self._hparams_file = False  # whether this run's hparams.yaml has been written

    @property
    def metrics_file(self) -> str:
        """The path of the run's ``metrics.csv``."""
        return self._join(self.log_dir, self.METRICS_FILE)

    # ------------------------------------------------------------------ logging
    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Merge ``params`` into ``hparams.yaml`` (values YAML cannot hold are written as their ``repr``)."""
        import yaml

        self._claim_dir()
        path = self._join(self.log_dir, self.HPARAMS_FILE)
        if self.remote:
            self._hparams.update(yaml_safe(params))
            _storage.write_bytes(path, yaml.safe_dump(self._hparams, sort_keys=True).encode())
            self._hparams_file = True
            return
        current: dict[str, Any] = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                current = yaml.safe_load(f) or {}
        current.update(yaml_safe(params))
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            yaml.safe_dump(current, f, sort_keys=True)
        os.replace(tmp, path)
        self._hparams_file = True

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self._resume.keep(int(step), metrics):
            return  # written by the run this one resumes
        row: dict[str, Any] = {"step": int(step)}
        for key, value in metrics.items():
            key = f"{self._prefix}-{key}" if self._prefix else key
            row[key] = float(value)
        self._rows.append(row)
        if len(self._rows) >= self._flush_every:
            self._write()

    def save(self) -> None:
        """Write the buffered rows and fsync the file: the rows logged up to a checkpoint outlive a crash after it.

        As Lightning's, the run's folder then holds ``hparams.yaml`` too, empty (``{}``) when nothing was logged.
        """
        self._write(sync=True)
        if not self._hparams_file:
            self.log_hyperparams({})

    def _write(self, sync: bool = False) -> None:
        """Write the buffered rows (append, or rewrite the file when new columns appeared)."""
        if not self._rows:
            return
        self._claim_dir()
        path = self.metrics_file
        if self.remote:
            self._write_whole(path)
            return
        if not self._header and os.path.exists(path):
            # Continuing a folder whose header this instance has not read yet (resume or a fixed version).
            self._header = _read_header(path)
            self._columns = [c for c in self._header if c != "step"]
        new = [k for row in self._rows for k in row if k != "step" and k not in self._columns]
        new = list(dict.fromkeys(new))
        if new or not os.path.exists(path):
            old_rows = _read_rows(path) if os.path.exists(path) else []
            self._columns.extend(new)
            self._header = sorted(["step", *self._columns])
            tmp = path + ".tmp"
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=self._header)
                writer.writeheader()
                writer.writerows(old_rows)
                writer.writerows(self._rows)
                _sync(f, sync)
            os.replace(tmp, path)  # a crash mid-rewrite leaves the old file, never a half-written one
        else:
            with open(path, "a", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=self._header)
                writer.writerows(self._rows)
                _sync(f, sync)
        self._rows.clear()

    def _write_whole(self, path: str) -> None:
        """Replace the object ``metrics.csv`` with every row (the earlier ones kept in memory) in one PUT."""
        import io

        new = [k for row in self._rows for k in row if k != "step" and k not in self._columns]
        self._columns.extend(dict.fromkeys(new))
        self._written.extend(self._rows)
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, fieldnames=sorted(["step", *self._columns]))
        writer.writeheader()
        writer.writerows(self._written)
        _storage.write_bytes(path, out.getvalue().encode("utf-8"))
        self._rows.clear()

    @override
    def finalize(self, status: str) -> None:
        self.save()

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue in the folder of ``state_dict["version"]``, skipping what its ``metrics.csv`` already holds."""
        self._use_version(state_dict["version"])
        self._columns = []
        self._header = []
        self._rows.clear()
        path = self.metrics_file
        self._resume = ResumeFilter()
        self._written = []
        if self.remote:
            try:
                text = _storage.read_bytes(path).decode("utf-8")
            except FileNotFoundError:
                return
            lines = text.splitlines()
            self._columns = [c for c in next(csv.reader(lines[:1]), []) if c != "step"]
            rows = list(csv.DictReader(lines))
            self._written = [{k: v for k, v in r.items() if v not in (None, "")} for r in rows]
            hparams_path = _storage.join(self.log_dir, self.HPARAMS_FILE)
            try:
                import yaml

                self._hparams = yaml.safe_load(_storage.read_bytes(hparams_path)) or {}
            except FileNotFoundError:
                self._hparams = {}
        elif os.path.exists(path):
            self._header = _read_header(path)
            self._columns = [c for c in self._header if c != "step"]
            rows = _read_rows(path)
        else:
            return
        self._resume = ResumeFilter.from_rows(
            (int(r["step"]), [k for k, v in r.items() if k != "step" and v not in (None, "")])
            for r in rows if r.get("step") not in (None, ""))


def _sync(f: Any, sync: bool) -> None:
    if sync:
        f.flush()
        os.fsync(f.fileno())


def _read_header(path: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


def _read_rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
