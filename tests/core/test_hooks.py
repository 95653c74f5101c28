"""The hook order written in Trainer.fit's docstring, and dispatch only to callbacks that override a hook."""

from __future__ import annotations

import torch

import dltrain
from tests.helpers.tasks import TinyTask, loader, quiet_trainer


def _recording(name, owner):
    def hook(self, *args, **kwargs):
        stage = getattr(args[-1], "value", args[-1]) if name in ("setup", "teardown") else None  # TrainerFn -> "fit"
        self.calls.append(f"{owner}.{name}" + (f":{stage}" if stage else ""))
        if name in TRANSFORMS:
            return args[0]
        if name == "optimizer_step":
            return TinyTask.optimizer_step(self, *args)
        if name == "optimizer_zero_grad":
            return TinyTask.optimizer_zero_grad(self, *args)
        if name in ("on_validation_model_eval", "on_validation_model_train"):
            return getattr(TinyTask, name)(self)
        return None

    return hook


# Hooks that hand back the batch: the recorder returns what it got.
TRANSFORMS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
TASK_HOOKS = (
    "prepare_data", "setup", "teardown", "configure_callbacks", "configure_model", "on_fit_start", "on_fit_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start",
    "on_train_batch_end", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "configure_gradient_clipping", "optimizer_step", "on_before_zero_grad", "optimizer_zero_grad",
    "on_validation_model_eval", "on_validation_model_train", "on_validation_model_zero_grad", "on_validation_start",
    "on_validation_end",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end",
    *TRANSFORMS,
)


class Recorder(dltrain.Callback):
    def __init__(self, calls):
        self.calls = calls


for _name in dltrain.callbacks.base.HOOKS:
    if _name not in ("on_save_checkpoint", "on_load_checkpoint", "on_exception"):
        setattr(Recorder, _name, _recording(_name, "cb"))


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

    def configure_optimizers(self):
        self.calls.append("task.configure_optimizers")
        return super().configure_optimizers()

    def train_dataloader(self):
        self.calls.append("task.train_dataloader")
        return loader(n=32, batch_size=8)

    def val_dataloader(self):
        self.calls.append("task.val_dataloader")
        return loader(n=16, batch_size=8)


for _name in TASK_HOOKS:
    setattr(RecordingTask, _name, _recording(_name, "task"))


def both(name):
    return [f"cb.{name}", f"task.{name}"]


def test_fit_hook_order(tmp_path):
    """Every Lightning hook, in the order Trainer.fit's docstring gives (Lightning's: callbacks, then the task)."""
    calls: list[str] = []
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[Recorder(calls)], accumulate_grad_batches=2,
                            num_sanity_val_steps=1, gradient_clip_val=1.0)
    trainer.fit(RecordingTask(calls))
    transfer = ["task.on_before_batch_transfer", "task.transfer_batch_to_device", "task.on_after_batch_transfer"]
    backward = [*both("on_before_backward"), *both("on_after_backward")]
    zero = [*both("on_before_zero_grad"), "task.optimizer_zero_grad"]  # first batch of a window, as Lightning
    window_start = [*transfer, *both("on_train_batch_start"), "task.training_step", *zero, *backward]
    batch = [*transfer, *both("on_train_batch_start"), "task.training_step", *backward]
    step = [*both("on_before_optimizer_step"), "task.configure_gradient_clipping", "task.optimizer_step"]
    val_batch = ["task.on_before_batch_transfer", "task.transfer_batch_to_device", "task.on_after_batch_transfer",
                 *both("on_validation_batch_start"), "task.validation_step", *both("on_validation_batch_end")]

    def validation(batches):
        return ["task.on_validation_model_zero_grad", "task.on_validation_model_eval", *both("on_validation_start"),
                *both("on_validation_epoch_start"),
                *val_batch * batches, "task.on_validation_epoch_end", "cb.on_validation_epoch_end",
                *both("on_validation_end"), "task.on_validation_model_train"]

    expected = [
        "cb.on_before_fit",
        "task.prepare_data",
        "cb.setup:fit", "task.setup:fit",
        "task.configure_callbacks", "task.configure_model",
        "task.train_dataloader", "task.val_dataloader",
        "task.configure_optimizers",
        *both("on_fit_start"),
        "cb.on_sanity_check_start", *validation(1), "cb.on_sanity_check_end",
        *both("on_train_start"),
        *both("on_train_epoch_start"),
        *window_start, *both("on_train_batch_end"),
        *batch, *step, *both("on_train_batch_end"),
        *window_start, *both("on_train_batch_end"),
        *batch, *step, *both("on_train_batch_end"),
        *validation(2),
        "task.on_train_epoch_end", "cb.on_train_epoch_end",
        *both("on_train_end"),
        *both("on_fit_end"),
        "cb.teardown:fit", "task.teardown:fit",
    ]
    assert calls == expected
    assert trainer.global_step == 2


def test_every_lightning_hook_has_a_place_in_the_order():
    """The recorded hooks are all of Lightning's that dltrain runs in fit: a new hook needs a place above."""
    import lightning.pytorch as L

    lightning_task_hooks = {n for n in dir(L.LightningModule) if n.startswith("on_") and n != "on_gpu"}
    fit_time = {n for n in lightning_task_hooks if not n.startswith(("on_test", "on_predict"))}
    fit_time -= {"on_save_checkpoint", "on_load_checkpoint"}
    assert fit_time <= set(TASK_HOOKS), sorted(fit_time - set(TASK_HOOKS))
    lightning_callback_hooks = {n for n in dir(L.Callback) if n.startswith(("on_", "setup", "teardown"))}
    assert lightning_callback_hooks <= set(dltrain.callbacks.base.HOOKS), sorted(
        lightning_callback_hooks - set(dltrain.callbacks.base.HOOKS))
    for name in lightning_task_hooks:
        assert hasattr(dltrain.Task, name), name


def test_fit_docstring_lists_the_hooks_in_order():
    doc = dltrain.Trainer.fit.__doc__
    order = ["prepare_data", "setup(\"fit\")", "configure_model", "configure_optimizers", "on_fit_start",
             "on_sanity_check_start", "on_train_start", "on_train_epoch_start", "on_before_batch_transfer",
             "on_after_batch_transfer", "on_train_batch_start", "training_step", "on_before_zero_grad",
             "on_before_backward",
             "on_after_backward", "on_before_optimizer_step", "optimizer_step", "on_train_batch_end", "on_validation_model_eval", "on_validation_start", "on_validation_epoch_start",
             "validation_step", "on_validation_epoch_end", "on_validation_end", "on_validation_model_train",
             "on_train_epoch_end", "on_train_end", "on_fit_end", "teardown(\"fit\")"]
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
    metrics = trainer.validate(task, loader(n=24))[0]
    assert abs(metrics["val/mae"] - float(expected)) < 1e-6
