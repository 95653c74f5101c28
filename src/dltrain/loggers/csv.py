"""`CSVLogger`: metrics in a CSV file, hyperparameters in JSON. The default logger; needs nothing installed."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from dltrain.loggers.base import Logger

__all__ = ["CSVLogger"]

_VERSION_RE = re.compile(r"^version_(\d+)$")


class CSVLogger(Logger):
    """Write metrics to ``<save_dir>/<name>/version_<N>/metrics.csv`` and hparams to ``hparams.json`` there.

    File format: "wide" CSV, one row per ``log_metrics`` call: a ``step`` column, then one column per metric
    name in order of first appearance; a cell is empty when the row did not log that metric. When a new metric
    name appears, the file is rewritten once with the extended header (as Lightning's ``CSVLogger`` does), so
    the file is always valid CSV that ``pandas.read_csv`` / ``csv.DictReader`` read directly.

    ``N`` is the next free version number, chosen (and the folder created) on the first write, so a logger
    constructed on every rank creates nothing on the ranks that never write. Rows are buffered and written every
    ``flush_every`` calls and on ``save()``/``finalize()``.

    Resume: ``state_dict()`` is ``{"version": ...}``; ``load_state_dict`` continues in the same folder and does
    not write rows for steps ``<=`` the last step already in its ``metrics.csv`` (the steps a killed run
    re-trains after restarting from its last checkpoint keep their first rows, and appear once).

    Args:
        save_dir: root folder of the logs (usually the Trainer's ``default_root_dir``).
        name: sub-folder of ``save_dir`` grouping the versions of one experiment.
        version: an ``int`` (folder ``version_<version>``), a ``str`` (used as the folder name), or ``None``
            for the next free number.
        flush_every: write buffered rows every this many ``log_metrics`` calls (1: at every call).

    Example:
        >>> logger = CSVLogger("runs", name="mnist")
        >>> logger.log_metrics({"train/loss": 0.5}, step=10)  # runs/mnist/version_0/metrics.csv
    """

    METRICS_FILE = "metrics.csv"
    HPARAMS_FILE = "hparams.json"

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str = "lightning_logs",
        version: int | str | None = None,
        flush_every: int = 1,
    ) -> None:
        self._save_dir = os.fspath(save_dir)
        self._name = name
        self._version = version
        self._flush_every = max(1, int(flush_every))
        self._created = False
        self._columns: list[str] = []  # metric columns, without "step"
        self._rows: list[dict[str, Any]] = []  # buffered, not yet on disk
        self._skip_until: int | None = None  # steps <= this were written before a restart

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self._name

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        return os.path.join(self._save_dir, self._name)

    @property
    def version(self) -> int | str:
        """The version; resolving it (the next free number) does not create the folder."""
        if self._version is None:
            self._version = self._next_version()
        return self._version

    @property
    def log_dir(self) -> str:
        version = self.version
        folder = version if isinstance(version, str) else f"version_{version}"
        return os.path.join(self.root_dir, folder)

    @property
    def metrics_file(self) -> str:
        return os.path.join(self.log_dir, self.METRICS_FILE)

    def _next_version(self) -> int:
        try:
            names = os.listdir(self.root_dir)
        except FileNotFoundError:
            return 0
        found = [int(m.group(1)) for n in names if (m := _VERSION_RE.match(n))]
        return max(found, default=-1) + 1

    def _ensure_dir(self) -> None:
        if self._created:
            return
        if self._version is None:
            # Claim the folder with an exclusive mkdir: two runs started at once get different versions.
            os.makedirs(self.root_dir, exist_ok=True)
            while True:
                candidate = self._next_version()
                try:
                    os.mkdir(os.path.join(self.root_dir, f"version_{candidate}"))
                except FileExistsError:
                    continue
                self._version = candidate
                break
        else:
            os.makedirs(self.log_dir, exist_ok=True)
        self._created = True

    # ------------------------------------------------------------------ logging
    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Merge ``params`` into ``hparams.json`` (values JSON cannot hold are written as their ``repr``)."""
        self._ensure_dir()
        path = os.path.join(self.log_dir, self.HPARAMS_FILE)
        current: dict[str, Any] = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                current = json.load(f)
        current.update(params)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(current, f, indent=2, sort_keys=True, default=repr)
        os.replace(tmp, path)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self._skip_until is not None and step <= self._skip_until:
            return  # already written by the run this one resumes
        row: dict[str, Any] = {"step": int(step)}
        for key, value in metrics.items():
            row[key] = float(value)
        self._rows.append(row)
        if len(self._rows) >= self._flush_every:
            self._write()

    def save(self) -> None:
        """Write the buffered rows and fsync the file: the rows logged up to a checkpoint outlive a crash after it."""
        self._write(sync=True)

    def _write(self, sync: bool = False) -> None:
        """Write the buffered rows (append, or rewrite the file when new columns appeared)."""
        if not self._rows:
            return
        self._ensure_dir()
        path = self.metrics_file
        if not self._columns and os.path.exists(path):
            # Continuing a folder whose header this instance has not read yet (resume or a fixed version).
            self._columns = _read_header(path)
        new = [k for row in self._rows for k in row if k != "step" and k not in self._columns]
        new = list(dict.fromkeys(new))
        if new or not os.path.exists(path):
            old_rows = _read_rows(path) if os.path.exists(path) else []
            self._columns.extend(new)
            tmp = path + ".tmp"
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=["step", *self._columns])
                writer.writeheader()
                writer.writerows(old_rows)
                writer.writerows(self._rows)
                _sync(f, sync)
            os.replace(tmp, path)  # a crash mid-rewrite leaves the old file, never a half-written one
        else:
            with open(path, "a", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=["step", *self._columns])
                writer.writerows(self._rows)
                _sync(f, sync)
        self._rows.clear()

    def finalize(self, status: str) -> None:
        self.save()

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue in the folder of ``state_dict["version"]``, skipping steps it already holds."""
        self._version = state_dict["version"]
        self._created = False
        self._columns = []
        self._rows.clear()
        path = self.metrics_file
        if os.path.exists(path):
            self._columns = _read_header(path)
            steps = [int(r["step"]) for r in _read_rows(path) if r.get("step") not in (None, "")]
            self._skip_until = max(steps) if steps else None


def _sync(f: Any, sync: bool) -> None:
    if sync:
        f.flush()
        os.fsync(f.fileno())


def _read_header(path: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    return [c for c in header if c != "step"]


def _read_rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
