"""Checkpoints: contents, atomic writes, "last", rotation, and exact in-process resume."""

from __future__ import annotations

import pytest
import torch

import dltrain
from dltrain import checkpoint as ckpt_io
from dltrain.callbacks import ModelCheckpoint
from tests.helpers.tasks import TinyTask, loader, quiet_trainer


class Crash(dltrain.Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise KeyboardInterrupt("simulated crash")


def run(tmp_path, *, crash_at=None, resume=False, every=3, workers=0, shuffle=True, epochs=3, dropout=0.3):
    torch.manual_seed(0)
    task = TinyTask(dropout=dropout, scheduler="step")
    callbacks = [ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, every_n_train_steps=every, save_top_k=2)]
    if crash_at is not None:
        callbacks.append(Crash(crash_at))
    trainer = quiet_trainer(tmp_path, max_epochs=epochs, callbacks=callbacks, enable_checkpointing=True,
                            val_check_interval=5, log_every_n_steps=2)
    data = loader(n=80, batch_size=8, shuffle=shuffle, num_workers=workers,
                  persistent_workers=workers > 0)
    torch.manual_seed(1)
    try:
        trainer.fit(task, data, loader(n=16), ckpt_path="last" if resume else None)
    except KeyboardInterrupt:
        pass
    return task, trainer


@pytest.mark.parametrize("crash_at", [4, 10, 17])
def test_resume_mid_epoch_is_bitwise_exact(tmp_path, crash_at):
    reference, ref_trainer = run(tmp_path / "ref")
    run(tmp_path / "run", crash_at=crash_at)
    task, trainer = run(tmp_path / "run", resume=True)
    assert trainer.global_step == ref_trainer.global_step == 30
    for a, b in zip(reference.state_dict().values(), task.state_dict().values()):
        assert torch.equal(a, b)
    sched_ref = ref_trainer.lr_scheduler_configs[0].scheduler.state_dict()
    assert trainer.lr_scheduler_configs[0].scheduler.state_dict() == sched_ref


def test_resume_with_workers_is_bitwise_exact(tmp_path):
    reference, _ = run(tmp_path / "ref", workers=2, epochs=2)
    run(tmp_path / "run", crash_at=7, workers=2, epochs=2)
    task, _ = run(tmp_path / "run", resume=True, workers=2, epochs=2)
    for a, b in zip(reference.state_dict().values(), task.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_contents_and_rotation(tmp_path):
    task, trainer = run(tmp_path, epochs=1, every=2)
    folder = tmp_path / "ckpt"
    names = sorted(p.name for p in folder.glob("*.ckpt"))
    # save_top_k=2 without a monitor keeps the two newest; last.ckpt names the newest.
    assert names == ["epoch=0-step=10.ckpt", "epoch=0-step=8.ckpt", "last.ckpt"]
    last = ckpt_io.load(folder / "last.ckpt")
    assert last["loops"]["global_step"] == 10
    assert set(last) >= {"state_dict", "optimizer_states", "lr_schedulers", "precision", "loops", "callbacks", "hparams",
                         "ranks", "loggers", "train_metrics"}
    assert last["hparams"] == {"dropout": 0.3, "lr": 0.05, "scheduler": "step"}
    assert set(last["ranks"][0]) == {"rng", "train_loader"}
    assert set(last["ranks"][0]["rng"]) >= {"python", "numpy", "torch"}
    assert not list(folder.glob(".*tmp*"))
    # Lightning's top-level counters, which users read from a checkpoint (they were missing; issue 22)
    assert (last["epoch"], last["global_step"]) == (0, 10)
    assert {(c["epoch"], c["global_step"]) for c in map(ckpt_io.load, folder.glob("epoch=*.ckpt"))} == {(0, 8), (0, 10)}
    trainer.save_checkpoint(tmp_path / "after_fit.ckpt")  # after the fit: its number of epochs, as Lightning's
    after = ckpt_io.load(tmp_path / "after_fit.ckpt")
    assert (after["epoch"], after["global_step"]) == (trainer.current_epoch, trainer.global_step) == (1, 10)


def test_last_falls_back_to_newest_complete_checkpoint(tmp_path):
    _, trainer = run(tmp_path, epochs=1, every=2)
    folder = tmp_path / "ckpt"
    # A crash while "last" was being replaced by a copy: it is unreadable, the step-10 file is complete.
    (folder / "last.ckpt").unlink()
    (folder / "last.ckpt").write_bytes(b"partial")
    assert ckpt_io.find_last(folder).name == "epoch=0-step=10.ckpt"


def test_save_atomic_keeps_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "x.ckpt"
    ckpt_io.save_atomic({"state_dict": {"a": torch.ones(2)}}, path)

    def failing_save(obj, f):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        ckpt_io.save_atomic({"state_dict": {"a": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt_io.load(path)["state_dict"]["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]


def test_monitor_keeps_best(tmp_path):
    torch.manual_seed(0)
    cb = ModelCheckpoint(dirpath=tmp_path / "c", monitor="val/loss", mode="min", save_top_k=1,
                         filename="{epoch}-{val/loss}")
    trainer = quiet_trainer(tmp_path, max_epochs=4, callbacks=[cb], enable_checkpointing=True)
    trainer.fit(TinyTask(), loader(n=64), loader(n=32))
    assert len(cb.kept) == 1
    best = ckpt_io.load(cb.best_model_path)
    assert "val/loss=" in cb.best_model_path  # Lightning's name: "/" kept (a sub-folder)
    assert (tmp_path / "c" / "last.ckpt").exists()
    assert best["loops"]["global_step"] <= trainer.global_step


def test_resume_from_epoch_end_checkpoint_starts_next_epoch(tmp_path):
    torch.manual_seed(0)
    t1 = quiet_trainer(tmp_path, max_epochs=2, enable_checkpointing=True)
    t1.fit(TinyTask(), loader(n=32))
    t2 = quiet_trainer(tmp_path, max_epochs=3, enable_checkpointing=True)
    t2.fit(TinyTask(), loader(n=32), ckpt_path="last")
    assert t1.global_step == 8
    assert t2.current_epoch == 3 and t2.global_step == 12
