"""The hook order written in Trainer.fit's docstring, and dispatch only to callbacks that override a hook."""

from __future__ import annotations

import torch

import dltrain
from tests.helpers.tasks import TinyTask, loader, quiet_trainer


class Recorder(dltrain.Callback):
    def __init__(self, calls):
        self.calls = calls

    def setup(self, trainer, task, stage):
        self.calls.append(f"cb.setup:{stage}")

    def teardown(self, trainer, task, stage):
        self.calls.append(f"cb.teardown:{stage}")

    def on_fit_start(self, trainer, task):
        self.calls.append("cb.on_fit_start")

    def on_fit_end(self, trainer, task):
        self.calls.append("cb.on_fit_end")

    def on_train_epoch_start(self, trainer, task):
        self.calls.append("cb.on_train_epoch_start")

    def on_train_epoch_end(self, trainer, task):
        self.calls.append("cb.on_train_epoch_end")

    def on_train_batch_start(self, trainer, task, batch, batch_idx):
        self.calls.append("cb.on_train_batch_start")

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        self.calls.append("cb.on_train_batch_end")

    def on_before_optimizer_step(self, trainer, task, optimizer):
        self.calls.append("cb.on_before_optimizer_step")

    def on_validation_epoch_start(self, trainer, task):
        self.calls.append("cb.on_validation_epoch_start")

    def on_validation_epoch_end(self, trainer, task):
        self.calls.append("cb.on_validation_epoch_end")

    def on_validation_batch_end(self, trainer, task, outputs, batch, batch_idx):
        self.calls.append("cb.on_validation_batch_end")


class RecordingTask(TinyTask):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def training_step(self, batch, batch_idx):
        self.calls.append("task.training_step")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.calls.append("task.validation_step")
        return super().validation_step(batch, batch_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx=0):
        self.calls.append("task.on_after_batch_transfer")
        return batch


for _hook in ("on_fit_start", "on_fit_end", "on_train_epoch_start", "on_train_epoch_end", "on_validation_epoch_start",
              "on_validation_epoch_end"):
    setattr(RecordingTask, _hook, (lambda name: lambda self: self.calls.append(f"task.{name}"))(_hook))
RecordingTask.on_before_optimizer_step = lambda self, opt: self.calls.append("task.on_before_optimizer_step")


def test_fit_hook_order(tmp_path):
    calls: list[str] = []
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[Recorder(calls)], accumulate_grad_batches=2)
    trainer.fit(RecordingTask(calls), loader(n=32, batch_size=8), loader(n=16, batch_size=8))
    batch = ["task.on_after_batch_transfer", "cb.on_train_batch_start", "task.training_step"]
    step = ["task.on_before_optimizer_step", "cb.on_before_optimizer_step"]
    val_batch = ["task.on_after_batch_transfer", "task.validation_step", "cb.on_validation_batch_end"]
    expected = [
        "cb.setup:fit",
        "task.on_fit_start", "cb.on_fit_start",
        "task.on_train_epoch_start", "cb.on_train_epoch_start",
        *batch, "cb.on_train_batch_end",
        *batch, *step, "cb.on_train_batch_end",
        *batch, "cb.on_train_batch_end",
        *batch, *step, "cb.on_train_batch_end",
        "task.on_validation_epoch_start", "cb.on_validation_epoch_start",
        *val_batch, *val_batch,
        "task.on_validation_epoch_end", "cb.on_validation_epoch_end",
        "task.on_train_epoch_end", "cb.on_train_epoch_end",
        "task.on_fit_end", "cb.on_fit_end",
        "cb.teardown:fit",
    ]
    assert calls == expected
    assert trainer.global_step == 2


def test_fit_docstring_lists_the_hooks_in_order():
    doc = dltrain.Trainer.fit.__doc__
    order = ["setup(\"fit\")", "on_fit_start", "on_train_epoch_start", "on_after_batch_transfer",
             "on_train_batch_start", "training_step", "on_before_optimizer_step", "on_train_batch_end",
             "on_validation_epoch_start", "validation_step", "on_validation_epoch_end", "on_train_epoch_end",
             "on_fit_end", "teardown(\"fit\")"]
    positions = [doc.index(name) for name in order]
    assert positions == sorted(positions)


def test_callbacks_that_do_not_override_a_hook_are_not_called(tmp_path):
    class OnlyEpochEnd(dltrain.Callback):
        def __init__(self):
            self.epochs = 0

        def on_train_epoch_end(self, trainer, task):
            self.epochs += 1

    cb = OnlyEpochEnd()

    def boom(*args, **kwargs):
        raise AssertionError("a hook the callback does not override was called")

    # Shadow every other hook on the instance: dispatch must not even look them up for a call.
    for name in dltrain.callbacks.base.HOOKS:
        if name != "on_train_epoch_end":
            setattr(cb, name, boom)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[cb])
    trainer.fit(TinyTask(), loader(n=16), loader(n=16))
    assert cb.epochs == 2


def test_training_step_returning_none_skips_the_batch(tmp_path):
    class SkipOdd(TinyTask):
        def training_step(self, batch, batch_idx):
            if batch_idx % 2 == 1:
                return None
            return super().training_step(batch, batch_idx)

    torch.manual_seed(0)
    task = SkipOdd()
    before = [p.detach().clone() for p in task.parameters()]
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(task, loader(n=32, batch_size=8))
    # Optimizer steps still happen every batch (the skipped ones with no gradient: momentum keeps moving).
    assert trainer.global_step == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, task.parameters()))

    class SkipAll(TinyTask):
        def training_step(self, batch, batch_idx):
            return None

    task = SkipAll()
    before = [p.detach().clone() for p in task.parameters()]
    quiet_trainer(tmp_path, max_epochs=1).fit(task, loader(n=32, batch_size=8))
    assert all(torch.equal(a, b) for a, b in zip(before, task.parameters()))


def test_dict_output_and_log_dict_and_metrics(tmp_path):
    import torchmetrics

    class WithMetric(TinyTask):
        def __init__(self):
            super().__init__()
            self.mae = torchmetrics.MeanAbsoluteError()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log_dict({"a": loss, "b": 2.0}, on_epoch=True)
            return {"loss": loss, "extra": 1}

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.mae.update(self(x), y)
            self.log("val/mae", self.mae)

    outputs = []

    class Grab(dltrain.Callback):
        def on_train_batch_end(self, trainer, task, out, batch, batch_idx):
            outputs.append(out)

    task = WithMetric()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[Grab()], log_every_n_steps=1)
    trainer.fit(task, loader(n=32), loader(n=24))
    assert outputs[0]["extra"] == 1
    assert {"a_step", "a_epoch", "b_step", "b_epoch", "val/mae"} <= set(trainer.callback_metrics)
    assert trainer.callback_metrics["b_epoch"] == 2.0
    # The metric was computed over every validation sample, then reset.
    x, y = loader(n=24).dataset.tensors
    with torch.no_grad():
        expected = (task(x) - y).abs().mean()
    assert torch.allclose(trainer.callback_metrics["val/mae"], expected, atol=1e-6)
    assert task.mae.update_count == 0
    metrics = trainer.validate(task, loader(n=24))
    assert abs(metrics["val/mae"] - float(expected)) < 1e-6
