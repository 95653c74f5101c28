"""ModelCheckpoint(async_save=True): the same checkpoints as synchronous saves, written while training goes on; one
save in flight at most (the next waits and says so); the end of fit, an exception and a preemption wait for it;
a failed background write is raised, not dropped."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch

import dltrain
from dltrain import checkpoint as ckpt_io
from dltrain.callbacks import ModelCheckpoint
from dltrain.errors import CheckpointError
from tests.helpers.tasks import TinyTask, loader, quiet_trainer


def _fit(root, cb, *, epochs=2, task=None, callbacks=(), ckpt_path=None):
    torch.manual_seed(0)
    trainer = quiet_trainer(root, max_epochs=epochs, callbacks=[cb, *callbacks], enable_checkpointing=True)
    task = task or TinyTask(dropout=0.1)
    trainer.fit(task, loader(n=32, shuffle=True), loader(n=16), ckpt_path=ckpt_path)
    return trainer, task


def _same_checkpoint(a: dict, b: dict) -> None:
    for key in ("loops", "callback_metrics", "lr_schedulers", "world_size"):
        assert a.get(key) == b.get(key), key
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        for i, state in sa["state"].items():
            for k, v in state.items():
                assert torch.equal(v, sb["state"][i][k]), (i, k)
    assert torch.equal(a["ranks"][0]["rng"]["torch"], b["ranks"][0]["rng"]["torch"])


def test_async_saves_write_what_sync_saves_write(tmp_path):
    sync_cb = ModelCheckpoint(dirpath=tmp_path / "sync", every_n_train_steps=1, save_top_k=-1)
    async_cb = ModelCheckpoint(dirpath=tmp_path / "async", every_n_train_steps=1, save_top_k=-1, async_save=True)
    _, a = _fit(tmp_path / "a", sync_cb)
    _, b = _fit(tmp_path / "b", async_cb)
    names = sorted(p.name for p in (tmp_path / "sync").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "async").iterdir()) and len(names) == 9
    for name in names:
        _same_checkpoint(ckpt_io.load(tmp_path / "sync" / name), ckpt_io.load(tmp_path / "async" / name))
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


class SlowWrites:
    """Makes every checkpoint write take ``seconds`` and records, per write, how many training batches ended while
    it was writing."""

    def __init__(self, monkeypatch, seconds: float, first: float | None = None) -> None:
        self.seconds, self.batches, self.during = seconds, 0, []
        real = ckpt_io.save_atomic

        def slow(obj, path, storage_options=None):
            start = self.batches
            time.sleep(first if first is not None and not self.during else self.seconds)
            real(obj, path, storage_options)
            self.during.append(self.batches - start)

        monkeypatch.setattr(ckpt_io, "save_atomic", slow)


class CountBatches(dltrain.Callback):
    def __init__(self, slow: SlowWrites, sleep: float = 0.0) -> None:
        self.slow, self.sleep = slow, sleep

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        self.slow.batches += 1
        time.sleep(self.sleep)


def test_training_goes_on_during_a_write_and_the_next_save_waits_and_says_so(tmp_path, monkeypatch, caplog):
    # Steps of 0.3 s, writes of 0.6 s and a first one of 3 s: batches end while it writes, and the second save
    # (2 steps later) waits for it.
    slow = SlowWrites(monkeypatch, 0.6, first=3.0)
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=2, every_n_epochs=1, save_top_k=-1,
                         async_save=True)
    with caplog.at_level(logging.WARNING, logger="dltrain.checkpoint"):
        trainer, _ = _fit(tmp_path, cb, callbacks=[CountBatches(slow, sleep=0.3)])
    assert trainer.global_step == 8
    assert any(n > 0 for n in slow.during), (slow.during, slow.batches)  # trained while a checkpoint was written
    waits = [r.getMessage() for r in caplog.records if "waited" in r.getMessage()]
    assert waits and all("for the checkpoint save in flight" in m for m in waits), waits
    assert any("before the save at global step" in m for m in waits) and "the end of fit" in waits[-1]
    assert ckpt_io.load(tmp_path / "c" / "last.ckpt")["loops"]["global_step"] == 8  # complete when fit returned
    assert len(list((tmp_path / "c").glob("*.ckpt"))) == 5


class Notified(dltrain.loggers.CSVLogger):
    """A logger that records, at each ``after_save_checkpoint``, the thread and what ``last`` holds then."""

    def __init__(self, save_dir) -> None:
        super().__init__(save_dir)
        self.seen: list[tuple[str, int]] = []

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        path = checkpoint_callback.last_model_path
        self.seen.append((threading.current_thread().name, ckpt_io.load(path)["loops"]["global_step"]))


def test_loggers_hear_of_a_save_once_it_is_complete_on_the_training_thread(tmp_path, monkeypatch):
    SlowWrites(monkeypatch, 0.3)
    logger = Notified(tmp_path / "logs")
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=2, every_n_epochs=0, save_top_k=-1,
                         async_save=True)
    torch.manual_seed(0)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[cb], enable_checkpointing=True, logger=logger)
    trainer.fit(TinyTask(), loader(n=32, shuffle=True))
    main = threading.current_thread().name
    # Every save (steps 2, 4, 6, 8) once, after it was complete (last.ckpt already names it), never on the writer.
    assert logger.seen == [(main, 2), (main, 4), (main, 6), (main, 8)], logger.seen


class Boom(dltrain.Callback):
    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            raise RuntimeError("boom")


def test_an_exception_waits_for_the_save_in_flight(tmp_path, monkeypatch):
    SlowWrites(monkeypatch, 0.5)
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=2, save_top_k=-1, async_save=True)
    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path, cb, callbacks=[Boom()])
    # The step-2 checkpoint was in flight when the exception came: it is complete, and last names it.
    assert ckpt_io.load(tmp_path / "c" / "last.ckpt")["loops"]["global_step"] == 2
    assert not [p for p in (tmp_path / "c").iterdir() if ".tmp-" in p.name]
    assert not any(t.name.startswith("dltrain-") for t in threading.enumerate())


def test_a_failed_background_write_is_raised(tmp_path, monkeypatch):
    def fail(obj, path, storage_options=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_io, "save_atomic", fail)
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=2, async_save=True)
    with pytest.raises(CheckpointError, match=r"background checkpoint save of .*epoch=0-step=2.ckpt failed: "
                                              r"OSError.*No space left"):
        _fit(tmp_path, cb)


def test_preemption_save_is_complete_when_it_returns(tmp_path, monkeypatch):
    slow = SlowWrites(monkeypatch, 0.3)
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_epochs=0, async_save=True)
    trainer, _ = _fit(tmp_path, cb, epochs=1)
    cb.save(trainer)  # what Preemption calls before it exits
    assert slow.during and ckpt_io.load(tmp_path / "c" / "last.ckpt")["loops"]["global_step"] == 4


def test_async_saves_to_s3_resume_bitwise(s3, tmp_path):
    run = s3.url("async")
    cb = ModelCheckpoint(dirpath=run, every_n_train_steps=3, every_n_epochs=1, save_top_k=1, async_save=True)
    _fit(tmp_path / "a", cb, epochs=2)
    assert sorted(k for k in s3.objects("async") if k.endswith(".ckpt")) == ["async/epoch=1-step=8.ckpt",
                                                                              "async/last.ckpt"]
    assert len({k.split("/")[2] for k in s3.objects("async/.parts")}) == 1
    _, resumed = _fit(tmp_path / "b", ModelCheckpoint(dirpath=run, every_n_train_steps=3, every_n_epochs=1,
                                                      save_top_k=1, async_save=True), epochs=3, ckpt_path="last")
    _, ref = _fit(tmp_path / "c", ModelCheckpoint(dirpath=tmp_path / "ref", every_n_train_steps=3, every_n_epochs=1),
                  epochs=3)
    for x, y in zip(resumed.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(x, y)


def test_lightnings_async_checkpoint_io_is_recognised():
    from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

    from dltrain._async_checkpoint import is_async_checkpoint_io

    assert is_async_checkpoint_io(AsyncCheckpointIO())
    assert not is_async_checkpoint_io(TorchCheckpointIO())
    assert not is_async_checkpoint_io(object())


def test_lightnings_async_checkpoint_io_plugin_makes_every_checkpoint_asynchronous(tmp_path):
    """Lightning's Trainer(plugins=[AsyncCheckpointIO()]) runs after the rename: every ModelCheckpoint (the
    default one and the task's own) saves in the background, and the checkpoints are the synchronous ones. A
    wrapped CheckpointIO of the user's own would never be called: refused, as the plain plugin is."""
    from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

    from dltrain.errors import ConfigurationError

    class Task(TinyTask):
        def configure_callbacks(self):
            return [ModelCheckpoint(dirpath=tmp_path / "task", every_n_train_steps=2, save_top_k=-1)]

    torch.manual_seed(0)
    trainer = quiet_trainer(tmp_path / "run", max_epochs=2, enable_checkpointing=True, plugins=[AsyncCheckpointIO()])
    assert all(cb.async_save for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint))
    trainer.fit(Task(dropout=0.1), loader(n=32, shuffle=True), loader(n=16))
    ours = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    assert len(ours) == 1 and ours[0].async_save and str(ours[0].dirpath) == str(tmp_path / "task")
    saved = sorted(p.name for p in (tmp_path / "task").iterdir())
    assert len(saved) == 5 and "last.ckpt" in saved, saved
    # The same checkpoints as synchronous saves.
    sync = ModelCheckpoint(dirpath=tmp_path / "sync", every_n_train_steps=2, save_top_k=-1)
    _fit(tmp_path / "b", sync)
    assert saved == sorted(p.name for p in (tmp_path / "sync").iterdir())
    for name in saved:
        _same_checkpoint(ckpt_io.load(tmp_path / "task" / name), ckpt_io.load(tmp_path / "sync" / name))

    dltrain.Trainer(accelerator="cpu", logger=False, plugins=[AsyncCheckpointIO(TorchCheckpointIO())])

    class MyIO(TorchCheckpointIO):
        pass

    with pytest.raises(ConfigurationError, match=r"AsyncCheckpointIO.*MyIO.*would never be called"):
        dltrain.Trainer(accelerator="cpu", logger=False, plugins=[AsyncCheckpointIO(MyIO())])
