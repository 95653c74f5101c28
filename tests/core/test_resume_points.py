"""In-process resumes at the points where the first loop lost exactness (each test failed before core v2).

- resumed from an epoch-end checkpoint: the epoch-interval scheduler step and the DataLoader's seed draw at the
  next ``iter()`` must happen as in the uninterrupted run (persistent workers or not);
- resumed twice within one epoch of a map-style loader: no sample skipped (the sampler counted the samples before
  the first resume twice);
- resumed in the middle of an epoch of a loader without a length, which the loop reads one batch ahead.

The process "dies" by a KeyboardInterrupt from a callback; the kill -9 tests in tests/distributed do it for real.
"""

from __future__ import annotations

import pytest
import torch

import dltrain
from dltrain.callbacks import ModelCheckpoint
from tests.helpers.tasks import TinyTask, loader, make_data, quiet_trainer


class CrashAt(dltrain.Callback):
    """Raise once when (epoch, step) or the start of `epoch_start` is reached."""

    def __init__(self, *, step: int | None = None, epoch_start: int | None = None) -> None:
        self.step, self.epoch_start = step, epoch_start

    def on_train_epoch_start(self, trainer, task):
        if self.epoch_start is not None and trainer.current_epoch == self.epoch_start:
            raise KeyboardInterrupt(f"crash at the start of epoch {self.epoch_start}")

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        if self.step is not None and trainer.global_step == self.step:
            raise KeyboardInterrupt(f"crash at step {self.step}")


class Keys(dltrain.Callback):
    """(global step after the batch, first feature of each sample): which samples each step trained on."""

    def __init__(self) -> None:
        self.seen: dict[int, list[float]] = {}

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        self.seen[trainer.global_step] = batch[0][:, 0].tolist()


def fit(folder, data, *, scheduler="epoch", epochs=3, crash=None, resume=False, every=0, keys=None):
    torch.manual_seed(0)
    task = TinyTask(dropout=0.3, scheduler=scheduler)
    callbacks = [ModelCheckpoint(dirpath=folder / "ckpt", every_n_epochs=1, every_n_train_steps=every, save_top_k=1)]
    callbacks += [c for c in (crash, keys) if c is not None]
    trainer = quiet_trainer(folder, max_epochs=epochs, callbacks=callbacks, enable_checkpointing=True)
    torch.manual_seed(1)
    try:
        trainer.fit(task, data(), ckpt_path="last" if resume else None)
    except KeyboardInterrupt:
        return None
    return task


def assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), f"{name} differs after resume"


@pytest.mark.parametrize(
    ("workers", "scheduler"),
    [(0, "epoch"), (2, "epoch"), (0, None)],
    ids=["epoch-scheduler", "epoch-scheduler-persistent-workers", "rng-only"],
)
def test_resume_from_epoch_end_checkpoint_replays_scheduler_and_rng(tmp_path, workers, scheduler):
    def data():
        return loader(n=64, batch_size=8, shuffle=True, num_workers=workers, persistent_workers=workers > 0)

    reference = fit(tmp_path / "ref", data, scheduler=scheduler)
    # The epoch-end checkpoint of epoch 0 is the newest when epoch 1 starts: resume from it.
    assert fit(tmp_path / "run", data, scheduler=scheduler, crash=CrashAt(epoch_start=1)) is None
    resumed = fit(tmp_path / "run", data, scheduler=scheduler, resume=True)
    assert_same_weights(reference, resumed)


def test_two_resumes_in_one_epoch_skip_no_sample(tmp_path):
    def data():
        return loader(n=96, batch_size=8, shuffle=True)  # 12 batches per epoch

    ref_keys = Keys()
    reference = fit(tmp_path / "ref", data, scheduler="step", epochs=1, every=2, keys=ref_keys)
    keys = Keys()
    assert fit(tmp_path / "run", data, scheduler="step", epochs=1, every=2, crash=CrashAt(step=5), keys=keys) is None
    assert fit(tmp_path / "run", data, scheduler="step", epochs=1, every=2, crash=CrashAt(step=9), keys=keys,
               resume=True) is None
    resumed = fit(tmp_path / "run", data, scheduler="step", epochs=1, every=2, keys=keys, resume=True)
    assert keys.seen == ref_keys.seen  # the last entry for a step is what the weights saw
    assert_same_weights(reference, resumed)


class StatefulUnsized:
    """A resumable loader without ``__len__``: six batches per epoch, position = batches handed out."""

    def __init__(self) -> None:
        data = make_data(48)
        self.batches = [(data.tensors[0][i : i + 8], data.tensors[1][i : i + 8]) for i in range(0, 48, 8)]
        self.start = 0
        self.epoch = 0
        self.handed_out = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        start, self.start = self.start, 0
        for i in range(start, len(self.batches)):
            self.handed_out = i + 1
            yield self.batches[(i + self.epoch) % len(self.batches)]

    def state_dict(self):
        return {"batches": self.handed_out}

    def load_state_dict(self, state):
        self.start = state["batches"]


def test_resume_mid_epoch_of_a_loader_without_length(tmp_path):
    """The loop reads one batch ahead of such a loader (to step a partial accumulation window at the epoch's end):
    the checkpoint must hold the position of the batches trained on, not of the one read ahead."""
    reference = fit(tmp_path / "ref", StatefulUnsized, scheduler="step", every=2)
    assert fit(tmp_path / "run", StatefulUnsized, scheduler="step", every=2, crash=CrashAt(step=9)) is None
    resumed = fit(tmp_path / "run", StatefulUnsized, scheduler="step", every=2, resume=True)
    assert_same_weights(reference, resumed)


@pytest.mark.parametrize("workers", [0, 2], ids=["workers0", "persistent-workers2"])
def test_continuing_a_finished_fit_for_more_epochs_equals_one_longer_fit(tmp_path, workers):
    """The final checkpoint of a fit (saved at fit end, at the start of the epoch that did not run) continued
    with a larger max_epochs: the same weights as one fit of all the epochs."""

    def data():
        return loader(n=64, batch_size=8, shuffle=True, num_workers=workers, persistent_workers=workers > 0)

    def run(folder, epochs, resume=False):
        torch.manual_seed(0)
        task = TinyTask(dropout=0.3, scheduler="epoch")
        ckpt = ModelCheckpoint(dirpath=folder / "ckpt", every_n_train_steps=5, every_n_epochs=0)
        trainer = quiet_trainer(folder, max_epochs=epochs, callbacks=[ckpt], enable_checkpointing=True)
        torch.manual_seed(1)
        trainer.fit(task, data(), ckpt_path="last" if resume else None)
        return task, trainer

    reference, _ = run(tmp_path / "ref", 3)
    _, first = run(tmp_path / "run", 2)
    assert first.loop_state.epoch == 2 and first.loop_state.batches_done == 0
    resumed, trainer = run(tmp_path / "run", 3, resume=True)
    assert trainer.global_step == 24
    assert_same_weights(reference, resumed)


def test_a_fit_stopped_by_max_steps_mid_epoch_continues_that_epoch(tmp_path):
    """max_steps reached in the middle of an epoch, then the same fit with a larger max_steps resumed from its
    checkpoint: the rest of the epoch is trained, and the weights equal one fit to the larger max_steps."""

    def run(folder, max_steps, resume=False):
        torch.manual_seed(0)
        task = TinyTask(dropout=0.3, scheduler="step")
        trainer = quiet_trainer(folder, max_steps=max_steps, enable_checkpointing=True,
                                callbacks=[ModelCheckpoint(dirpath=folder / "ckpt", every_n_epochs=1, every_n_train_steps=4)])
        torch.manual_seed(1)
        trainer.fit(task, loader(n=64, batch_size=8, shuffle=True), ckpt_path="last" if resume else None)
        return task, trainer

    reference, _ = run(tmp_path / "ref", 13)
    _, first = run(tmp_path / "run", 5)  # 8 batches per epoch: stops at batch 5 of epoch 0
    assert first.loop_state.phase == "train" and first.loop_state.batches_done == 5
    resumed, trainer = run(tmp_path / "run", 13, resume=True)
    assert trainer.global_step == 13
    assert_same_weights(reference, resumed)
