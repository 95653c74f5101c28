"""Silent no-ops a new user falls into (issue 14, item 7): each warns or raises, saying what to do."""

from __future__ import annotations

import pytest

import dltrain
from tests.helpers.tasks import TinyTask, loader, quiet_trainer


def test_training_step_that_never_returns_a_loss_warns(tmp_path):
    class Forgot(TinyTask):
        def training_step(self, batch, batch_idx):
            super().training_step(batch, batch_idx)  # computes the loss and... does not return it

    with pytest.warns(UserWarning, match=r"training_step returned None for all 4 batches of epoch 0.*Return the loss"):
        quiet_trainer(tmp_path, max_epochs=1).fit(Forgot(), loader(n=32))


def test_missing_validation_step_is_reported_before_training(tmp_path):
    class NoValidation(dltrain.Task):
        def __init__(self):
            super().__init__()
            self.steps = 0
            self.net = TinyTask().model

        def training_step(self, batch, batch_idx):
            self.steps += 1
            return self.net(batch[0]).mean()

        def configure_optimizers(self):
            return TinyTask.configure_optimizers(self)

        lr, scheduler = 0.05, None

    # Lightning's behaviour (issue 22): a warning before training, and the fit runs without validation.
    task = NoValidation()
    with pytest.warns(UserWarning, match="has no validation_step. Skipping val loop"):
        quiet_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(task, loader(n=32), loader(n=16))
    assert task.steps == 4


def test_fewer_batches_than_log_every_n_steps_warns(tmp_path):
    from tests.helpers.tasks import RecordingLogger

    with pytest.warns(UserWarning, match=r"4 training batches per epoch.*log_every_n_steps=50"):
        quiet_trainer(tmp_path, max_epochs=1, logger=RecordingLogger()).fit(TinyTask(), loader(n=32))


def test_validation_batch_count_does_not_grow_across_epochs(tmp_path):
    counts = []

    class Count(dltrain.Callback):
        def on_validation_epoch_end(self, trainer, task):
            counts.append(trainer.num_val_batches)

    quiet_trainer(tmp_path, max_epochs=3, callbacks=[Count()], num_sanity_val_steps=0).fit(
        TinyTask(), loader(n=32), loader(n=16, batch_size=8))
    assert counts == [[2], [2], [2]]


def test_resume_says_where_it_restored_and_a_finished_run_says_so(tmp_path, capsys):
    from dltrain.callbacks import ModelCheckpoint

    def trainer():
        return quiet_trainer(tmp_path, max_epochs=2, enable_checkpointing=True,
                             callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt")])

    trainer().fit(TinyTask(), loader(n=32))
    capsys.readouterr()
    again = trainer()
    again.fit(TinyTask(), loader(n=32), ckpt_path="last")
    err = capsys.readouterr().err
    assert "restored from" in err and "at the end of epoch 1, global step 8" in err
    assert "already complete (max_epochs=2 reached)" in err and again.global_step == 8


def test_resuming_a_run_that_stopped_early_says_why_it_trains_no_more(tmp_path, capsys):
    """A run stopped by should_stop (EarlyStopping) is complete: a resume with a larger max_epochs trains nothing
    (Lightning would train on; dltrain keeps a rerun of the same command idempotent). The message said 'raise
    max_epochs', which the user had done (found by a probe under both libraries, issue 22)."""
    from dltrain.callbacks import ModelCheckpoint

    class StopAfterFirstEpoch(dltrain.Callback):
        def on_train_epoch_end(self, trainer, task):
            trainer.should_stop = True

    def trainer(max_epochs, *callbacks):
        return quiet_trainer(tmp_path, max_epochs=max_epochs, enable_checkpointing=True,
                             callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt"), *callbacks])

    trainer(3, StopAfterFirstEpoch()).fit(TinyTask(), loader(n=32))
    capsys.readouterr()
    again = trainer(6)
    again.fit(TinyTask(), loader(n=32), ckpt_path="last")
    err = capsys.readouterr().err
    assert "already complete (it stopped early in epoch 0: trainer.should_stop" in err
    assert "load_from_checkpoint" in err and "raise max_epochs" not in err and again.global_step == 4
