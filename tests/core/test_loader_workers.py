"""Loader worker processes end with the stage that started them.

Left to Python's cycle collector, a DataLoader iterator with workers (persistent workers always: the DataLoader
keeps it) is finalized after its queues' feeder threads have been closed, so the shutdown message never reaches
the workers and ``_shutdown_workers`` waits 5 s per worker before killing them: a notebook that calls ``fit`` in a
loop stalls, and worker processes (with their copies of the dataset) outlive the run until then.
"""

from __future__ import annotations

import multiprocessing

import pytest
import torch

import dltrain
from dltrain.data import StreamingDataset, write_shards
from tests.helpers.tasks import TinyTask, loader, make_data, quiet_trainer


def _workers() -> set[int]:
    return {p.pid for p in multiprocessing.active_children() if p.pid is not None}


class _FailAt(dltrain.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, task, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("planned failure")


@pytest.mark.parametrize("persistent", [True, False])
def test_fit_validate_and_a_failed_fit_leave_no_worker_running(tmp_path, persistent):
    before = _workers()
    train = loader(n=64, batch_size=8, shuffle=True, num_workers=2, persistent_workers=persistent)
    val = loader(n=32, batch_size=8, num_workers=2, persistent_workers=persistent)
    task = TinyTask()

    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=5)  # epochs cut short: iterators live on
    trainer.fit(task, train, val)
    assert _workers() == before, "fit returned with loader workers still running"

    trainer.validate(task, val, verbose=False)
    assert _workers() == before, "validate returned with loader workers still running"

    failing = quiet_trainer(tmp_path / "failing", max_epochs=2, callbacks=[_FailAt(3)])
    with pytest.raises(RuntimeError, match="planned failure") as excinfo:
        failing.fit(TinyTask(), train, val)
    # The traceback (kept by excinfo) references the loop's frames and so the epoch's iterator.
    assert excinfo.traceback and _workers() == before, "a failed fit left its loader workers running"


def test_streaming_loader_workers_end_with_fit(tmp_path):
    data = make_data(48)
    samples = ({"__key__": f"{i:04d}", "x.npy": x.numpy(), "y.npy": y.numpy()} for i, (x, y) in enumerate(data))
    urls = write_shards(samples, str(tmp_path / "shard-%04d.tar"), max_count=16)
    before = _workers()
    ds = StreamingDataset(urls, batch_size=8, map=lambda s: (torch.from_numpy(s["x.npy"]), torch.from_numpy(s["y.npy"])))
    assert ds.loader().persistent_workers  # the Trainer's default loader for a StreamingDataset
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=3)
    trainer.fit(TinyTask(), ds)
    assert _workers() == before, "fit returned with streaming loader workers still running"
