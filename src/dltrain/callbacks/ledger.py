"""`SampleLedger`: every rank writes down which samples it trained on, so that `dltrain audit` can prove it.

One file per rank and *round* (one launch of ``fit``; a restart after a kill is a new round), JSON lines, in
``<dirpath>`` (default ``<default_root_dir>/ledger``), named ``round-<round>-rank<rank>.jsonl``. Under tensor
parallelism the ranks are the data-parallel ones (``rank`` and ``world_size`` in ``start`` too): the first rank of
each tensor-parallel group writes, its peers read the same samples.

- ``start``: the round (the launch time of rank 0, so rounds sort in launch order), rank, world size, where the
  round resumed (the checkpoint's loop state, or null) and the training data (shard URLs and sample counts; for
  a `dltrain.data.Mixture` also each source's shard range ``sources`` and, for reading, the current ``weights``);
- ``plan``: at the first batch of each epoch in the round, the loader's plan of that epoch (to tell the samples
  the plan drops on purpose, the training leftover, from samples that went missing);
- ``batch``: per training batch: epoch, batch index, global step, and for each sample its shard, its index in
  the shard and its key;
- ``epoch_end`` (with the batches this rank trained in the epoch and the batches its plan has: fewer means the
  epoch was cut short, by ``limit_train_batches``, ``max_steps`` or a stop), ``checkpoint`` (the loop state a
  checkpoint saved) and ``end`` (fit finished).

Lines are written by a background thread. When a checkpoint is saved every rank flushes its ledger to disk
(fsync) first, before the ranks meet to write the checkpoint; so whatever a checkpoint commits is on disk before
that checkpoint exists, and a kill loses at most batches that no checkpoint committed, which a resume trains again
(and the audit discards from the killed round).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from itertools import accumulate, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from dltrain import _storage
from dltrain.callbacks.base import Callback
from dltrain.data.mixture import Mixture
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["LEDGER_VERSION", "SampleLedger"]

LEDGER_VERSION = 1


class _Writer:
    """Appends JSON lines to one file from a background thread; `flush` returns when they are on disk.

    Records are buffered in the training thread and handed to the thread ``_CHUNK`` at a time: waking a thread for
    every batch cost more than encoding the batch (measured: a queue hand-over per batch made the tiny streaming
    step of scripts/bench case 7 ~20% slower in CPU time; in chunks, see BENCHMARKS.md).
    """

    _CHUNK = 128

    def __init__(self, path: Path, immediate: bool = False, upload_to: str | None = None) -> None:
        # immediate: every record goes to the file (the OS's page cache) as it comes, so that a kill -9 of the
        # process loses at most the line being written (replica groups: a killed group's committed batches stay
        # on record; the others train on, and no checkpoint flush is coming for it).
        self._immediate = immediate
        self._file = path.open("a", encoding="utf-8")
        self._path = path
        # An object store cannot be appended to: after each flush the whole file replaces the object (one PUT).
        self._upload_to = upload_to
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._buffer: list[dict[str, Any]] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dltrain-ledger", daemon=True)
        self._thread.start()

    def put(self, record: dict[str, Any]) -> None:
        if self._immediate:
            self._file.write(_line(record))
            self._file.flush()
            return
        self._buffer.append(record)
        if len(self._buffer) >= self._CHUNK:
            self._queue.put(self._buffer)
            self._buffer = []

    def flush(self) -> None:
        if self._buffer:
            self._queue.put(self._buffer)
            self._buffer = []
        done = threading.Event()
        self._queue.put(done)
        # The thread sets the event after fsync; wake now and then to notice a thread that died.
        while not done.wait(1.0):
            if not self._thread.is_alive():
                break
        if self._error is not None:
            raise OSError(f"the sample ledger could not write {self._file.name}: {self._error}") from self._error

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join()
        self._file.close()
        if self._upload_to is not None:  # uploaded whole by the flush: the local copy and its folder go
            import shutil

            shutil.rmtree(self._path.parent, ignore_errors=True)

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if isinstance(item, threading.Event):
                    self._file.flush()
                    os.fsync(self._file.fileno())
                    if self._upload_to is not None:
                        _storage.write_bytes(self._upload_to, self._path.read_bytes())
                    item.set()
                    continue
                self._file.write("".join(_line(r) for r in item))
        except BaseException as exn:  # reported by the next flush
            self._error = exn
            while True:  # release every waiting flush
                item = self._queue.get()
                if isinstance(item, threading.Event):
                    item.set()
                if item is None:
                    return


def _line(record: dict[str, Any]) -> str:
    held = record.pop("held", None)
    text = json.dumps(record, separators=(",", ":"))
    if held is None:
        return text + "\n"
    # The batch's sample ids come encoded by the loader worker: splice them in, no re-encoding here.
    return text[:-1] + "," + held.json[1:] + "\n"


class SampleLedger(Callback):
    """Record, on every rank, the samples of every training batch; check a run with ``dltrain audit RUN_DIR``.

    The module docstring describes the files.

    Needs a training loader that says which samples each batch holds: a `dltrain.data.StreamingDataLoader` (or a
    `StreamingDataset` given to ``fit``).

    Args:
        dirpath: where the ledger files go; default ``<default_root_dir>/ledger``.

    Example:
        >>> from dltrain.data import StreamingDataset
        >>> stream = StreamingDataset("data/train-{000000..000006}.tar", batch_size=8,
        ...                           map=lambda s: (torch.as_tensor(s["npy"]), torch.as_tensor(s["npy"][:1])))
        >>> trainer = dltrain.Trainer(max_epochs=2, callbacks=[SampleLedger()], default_root_dir="runs/exp1")
        >>> trainer.fit(task, stream)
        >>> from dltrain.audit import audit
        >>> audit("runs/exp1").ok  # every sample once per epoch (`dltrain audit runs/exp1` prints the report)
        True
    """

    def __init__(self, dirpath: str | os.PathLike[str] | None = None) -> None:
        # A folder, or a URL of an object store (kept a string: a Path would turn s3:// into s3:/).
        self.dirpath: Path | str | None = None if dirpath is None else (
            str(dirpath) if _storage.is_remote(dirpath) else Path(dirpath))
        self._writer: _Writer | None = None
        self._resumed_from: dict[str, Any] | None = None
        self._planned_epoch: int | None = None
        self._loader: Any = None
        self._replicas = False  # replica groups (dltrain.FaultTolerant): only committed steps are recorded

    @property
    @override
    def state_key(self) -> str:
        return "SampleLedger"

    @override
    def on_load_checkpoint(self, trainer: TrainerView, task: Task, checkpoint: dict[str, Any]) -> None:
        self._resumed_from = dict(checkpoint.get("loops") or {})

    @override
    def on_train_start(self, trainer: TrainerView, task: Task) -> None:
        loader = trainer.train_dataloader
        if not hasattr(loader, "last_batch_samples"):
            raise ConfigurationError(
                f"SampleLedger needs a training loader that says which samples each batch holds; "
                f"{type(loader).__name__} does not: train on a dltrain.data.StreamingDataset (or its "
                f"StreamingDataLoader), or remove SampleLedger"
            )
        # Every rank's file of this round carries the same round name: rank 0's launch time.
        round_id = int(trainer.fabric.broadcast(time.time_ns(), src=0))
        if trainer.tensor_parallel_rank != 0:
            return  # a tensor-parallel peer trains on the same samples as its group's first rank, which writes them
        self._loader = loader
        loader.record_samples = True  # workers send each batch's sample ids from the next iter() on
        folder = str(self.dirpath) if self.dirpath is not None else f"{trainer.default_root_dir}/ledger"
        # Named by data-parallel rank: the audit checks that the data-parallel ranks saw every sample once.
        rank = trainer.data_parallel_rank
        replicas = trainer.fault_tolerance
        name = f"round-{round_id}-rank{rank}.jsonl"
        if _storage.is_remote(folder):  # written here, uploaded whole at each flush (a checkpoint) and at the end
            import tempfile

            scratch = Path(tempfile.mkdtemp(prefix="dltrain-ledger-"))
            self._writer = _Writer(scratch / name, immediate=replicas is not None,
                                   upload_to=_storage.join(folder, name))
        else:
            directory = Path(folder)
            directory.mkdir(parents=True, exist_ok=True)
            self._writer = _Writer(directory / name, immediate=replicas is not None)
        stream = loader.stream
        source: dict[str, Any] = {"urls": list(stream.urls), "counts": [int(c) for c in stream.counts]}
        start: dict[str, Any] = {}
        if isinstance(stream, Mixture):
            # The shard range of each source (compared across rounds with the rest of the source); the weights
            # only for reading: each epoch's weights are in its plan (they may change between epochs).
            bounds = list(accumulate([len(src.urls) for src in stream.sources], initial=0))
            source["sources"] = [[lo, hi] for lo, hi in pairwise(bounds)]
            start["weights"] = list(stream.weights)
        if replicas is not None:
            # Replica groups: this launch's group, whether it joined by receiving a live group's state (then
            # "resume" is where that state was), and the wall clock just before its first quorum (the audit
            # tells a restart of the whole job from a checkpoint from a group that joined a running job by it).
            start["replicas"] = {"group": replicas.group, "groups": replicas.groups, "healed": replicas.healed,
                                 "joined_ns": replicas.joined_at_ns}
        self._replicas = replicas is not None
        self._writer.put({
            "kind": "start", "version": LEDGER_VERSION, "round": round_id, "rank": rank,
            "world_size": trainer.data_parallel_size, "resume": self._resumed_from, "source": source, **start,
        })
        self._planned_epoch = None

    @override
    def on_train_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int) -> None:
        writer, loader = self._writer, self._loader
        if writer is None:
            return
        epoch = trainer.current_epoch
        if self._planned_epoch != epoch:
            state = loader.state_dict()
            writer.put({"kind": "plan", "epoch": epoch, "level": state})
            self._planned_epoch = epoch
        if self._replicas:
            # A step the quorum of replica groups did not commit did not happen: its batch is not recorded. The
            # wall clock orders the lines against a restart of the whole job (see the audit).
            if trainer.loop_state.stepped:
                writer.put({"kind": "batch", "epoch": epoch, "batch": batch_idx, "step": trainer.global_step,
                            "t": time.time_ns(), "held": loader.last_batch_samples})
            return
        writer.put({"kind": "batch", "epoch": epoch, "batch": batch_idx, "step": trainer.global_step,
                    "held": loader.last_batch_samples})

    @override
    def on_train_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        if self._writer is not None:
            # Whether this rank trained its whole plan: an epoch cut short (limit_train_batches, max_steps, a
            # stop) is not one whose unseen samples are missing.
            done, planned = int(self._loader.state_dict()["batches"]), len(self._loader)
            record = {"kind": "epoch_end", "epoch": trainer.current_epoch, "batches": done, "planned_batches": planned}
            if self._replicas:
                record.update(step=trainer.global_step, t=time.time_ns())
            self._writer.put(record)

    @override
    def on_save_checkpoint(self, trainer: TrainerView, task: Task, checkpoint: dict[str, Any]) -> None:
        if self._writer is not None:
            self._writer.put({"kind": "checkpoint", "loops": dict(checkpoint["loops"])})
            self._writer.flush()

    @override
    def on_fit_end(self, trainer: TrainerView, task: Task) -> None:
        if self._writer is not None:
            self._writer.put({"kind": "end", "loops": trainer.loop_state.state_dict()})

    @override
    def teardown(self, trainer: TrainerView, task: Task, stage: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._resumed_from = None
