"""Loop behaviour through the public API only (Trainer, Task, callbacks, loggers, plain loaders).

These tests use no private Trainer attribute, so that they hold for any implementation of the loops.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

import dltrain
from dltrain.callbacks import EarlyStopping
from tests.helpers.tasks import CountEpochs, RecordingLogger, TinyTask, loader, make_data, quiet_trainer

# ---------------------------------------------------------------------------------------------------- helpers


class ListLoader:
    """A loader that is only an iterable with a length: yields the given batches, in order."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class UnsizedLoader:
    """An iterable without ``__len__`` (as a generator-backed stream): yields the batches of a plain loader."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.n = n
        self.batch_size = batch_size

    def __iter__(self):
        yield from DataLoader(make_data(self.n), batch_size=self.batch_size, shuffle=False)


def _two_batches_with_none():
    data = make_data(16)
    b0 = (data.tensors[0][:8], data.tensors[1][:8])
    b2 = (data.tensors[0][8:], data.tensors[1][8:])
    return b0, b2


def _text_of(exc: BaseException) -> str:
    return "\n".join([str(exc), *getattr(exc, "__notes__", [])])


# ---------------------------------------------------------------------------------------------------- 1. None batches


class CountingTask(TinyTask):
    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, list[int]] = {"validation": [], "test": [], "predict": []}

    def validation_step(self, batch, batch_idx):
        self.calls["validation"].append(batch_idx)
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self.calls["test"].append(batch_idx)
        return super().test_step(batch, batch_idx)

    def predict_step(self, batch, batch_idx):
        self.calls["predict"].append(batch_idx)
        return self(batch[0])


@pytest.mark.parametrize("stage", ["validation", "test", "predict"])
def test_none_batch_is_skipped_in_evaluation(tmp_path, stage):
    torch.manual_seed(0)
    task = CountingTask()
    b0, b2 = _two_batches_with_none()
    with torch.no_grad():
        expected_loss = (F.mse_loss(task(b0[0]), b0[1]).item() + F.mse_loss(task(b2[0]), b2[1]).item()) / 2
        expected_pred = [task(b0[0]), task(b2[0])]
    trainer = quiet_trainer(tmp_path)
    batches = ListLoader([b0, None, b2])

    if stage == "predict":
        out = trainer.predict(task, batches)
        assert len(task.calls["predict"]) == 2
        assert len(out) == 3
        assert out[1] is None
        torch.testing.assert_close(out[0], expected_pred[0])
        torch.testing.assert_close(out[2], expected_pred[1])
        return
    metrics = (trainer.validate(task, batches) if stage == "validation" else trainer.test(task, batches))[0]
    assert len(task.calls[stage]) == 2
    name = "val/loss" if stage == "validation" else "test/loss"
    assert metrics[name] == pytest.approx(expected_loss, rel=1e-5)


# ---------------------------------------------------------------------------------------------------- 2. EarlyStopping


class WorseningTask(TinyTask):
    """Logs an epoch metric that gets worse (larger) every epoch."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train/worsening", float(self.trainer.current_epoch), on_step=False, on_epoch=True)
        return loss


def test_early_stopping_on_train_metric_without_validation(tmp_path):
    counter = CountEpochs()
    stop = EarlyStopping(monitor="train/worsening", patience=1, mode="min")
    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[stop, counter])
    trainer.fit(WorseningTask(), loader(n=32))
    assert counter.epochs == [0, 1]
    assert stop.stopped_epoch == 1


def test_early_stopping_unknown_metric_without_validation_raises(tmp_path):
    stop = EarlyStopping(monitor="never_logged", patience=1)
    trainer = quiet_trainer(tmp_path, max_epochs=3, log_every_n_steps=1, callbacks=[stop])
    with pytest.raises(dltrain.DltrainError) as excinfo:
        trainer.fit(TinyTask(), loader(n=32))
    message = str(excinfo.value)
    assert "never_logged" in message
    assert "train/loss" in message


# ---------------------------------------------------------------------------------------------------- 3. accumulation


class GradAtEpochStart(dltrain.Callback):
    def __init__(self) -> None:
        self.grads_none: list[bool] = []

    def on_train_epoch_start(self, trainer, task):
        self.grads_none.append(all(p.grad is None for p in task.parameters()))


def test_accumulation_steps_last_partial_window_of_unsized_loader(tmp_path):
    probe = GradAtEpochStart()
    torch.manual_seed(0)
    task = TinyTask()
    trainer = quiet_trainer(tmp_path / "unsized", max_epochs=2, accumulate_grad_batches=4, callbacks=[probe])
    trainer.fit(task, UnsizedLoader(n=48, batch_size=8))  # 6 batches per epoch
    assert trainer.global_step == 4  # windows of 4 + 2 batches in each epoch
    assert probe.grads_none == [True, True]

    torch.manual_seed(0)
    reference = TinyTask()
    ref_trainer = quiet_trainer(tmp_path / "sized", max_epochs=2, accumulate_grad_batches=4)
    ref_trainer.fit(reference, loader(n=48, batch_size=8, shuffle=False))
    assert ref_trainer.global_step == 4
    for (name, p), (_, q) in zip(task.named_parameters(), reference.named_parameters()):
        assert torch.equal(p, q), name


# ---------------------------------------------------------------------------------------------------- 4. error types


class MyError(Exception):
    pass


def test_training_step_error_keeps_its_type_and_context(tmp_path):
    class Failing(TinyTask):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise MyError("boom")
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, max_epochs=1)
    with pytest.raises(MyError) as excinfo:
        trainer.fit(Failing(), loader(n=48))
    text = _text_of(excinfo.value)
    assert "boom" in text
    assert "training_step" in text
    assert "batch 2" in text
    assert "epoch 0" in text


def test_training_step_out_of_memory_keeps_its_type(tmp_path):
    class OOM(TinyTask):
        def training_step(self, batch, batch_idx):
            raise torch.OutOfMemoryError("fake")

    trainer = quiet_trainer(tmp_path, max_epochs=1)
    with pytest.raises(torch.OutOfMemoryError, match="fake"):
        trainer.fit(OOM(), loader(n=16))


def test_validation_step_error_keeps_its_type_and_context(tmp_path):
    class Failing(TinyTask):
        def validation_step(self, batch, batch_idx):
            if batch_idx == 1:
                raise MyError("bad val")
            return super().validation_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path)
    with pytest.raises(MyError) as excinfo:
        trainer.validate(Failing(), loader(n=32))
    text = _text_of(excinfo.value)
    assert "bad val" in text
    assert "validation_step" in text
    assert "batch 1" in text


# ---------------------------------------------------------------------------------------------------- 5. skipped steps


def test_skipped_nonfinite_steps_are_a_logged_metric(tmp_path):
    class NaNs(TinyTask):
        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.mse_loss(self(x), y)
            if batch_idx in (1, 4, 7):
                return loss * float("nan")
            self.log("train/loss", loss)
            return loss

    rec = RecordingLogger()
    trainer = quiet_trainer(tmp_path, max_epochs=1, on_nonfinite_loss="skip", log_every_n_steps=1, logger=rec)
    trainer.fit(NaNs(), loader(n=96))  # 12 batches
    key = "train/skipped_nonfinite_steps"
    values = rec.values(key)
    assert values, f"{key} never logged; keys: {sorted({k for _, m in rec.records for k in m})}"
    assert values[-1][1] == 3
    assert float(trainer.callback_metrics[key]) == 3


# ---------------------------------------------------------------------------------------------------- 6. bf16 on CPU


def test_bf16_mixed_on_cpu_trains_and_validates_in_bfloat16(tmp_path):
    class Recording(TinyTask):
        def __init__(self) -> None:
            super().__init__()
            self.dtypes: dict[str, set[torch.dtype]] = {"train": set(), "val": set()}
            self.losses: list[float] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            out = self(x)
            self.dtypes["train"].add(out.dtype)
            loss = F.mse_loss(out.float(), y)
            self.losses.append(loss.item())
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            out = self(x)
            self.dtypes["val"].add(out.dtype)
            self.log("val/loss", F.mse_loss(out.float(), y))

    torch.manual_seed(0)
    task = Recording()
    data = make_data(96)
    with torch.no_grad():
        initial = F.mse_loss(task(data.tensors[0]), data.tensors[1]).item()
    trainer = quiet_trainer(tmp_path, max_epochs=1, precision="bf16-mixed")
    trainer.fit(task, loader(n=96))
    assert task.dtypes["train"] == {torch.bfloat16}
    assert len(task.losses) == 12
    assert all(math.isfinite(v) for v in task.losses)

    metrics = trainer.validate(task, loader(n=96))[0]
    assert task.dtypes["val"] == {torch.bfloat16}
    assert math.isfinite(metrics["val/loss"])
    assert metrics["val/loss"] < initial
