"""`self.log` checks what it is given when it is given it (issue 28, item 1).

Before: a (32, 1) tensor logged on step was kept as it was; with the default checkpointing the whole epoch trained
and the checkpoint save failed with "only one element tensors can be converted to Python scalars" (no metric
named); with checkpointing off, training finished and callback_metrics held the (32, 1) tensor. The check reads
metadata only (type, ``numel()``), so it adds no device-to-host copy (tests/core/test_hot_path.py).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torchmetrics

import dltrain
from dltrain.errors import StepError
from tests.helpers.tasks import TinyTask, loader, quiet_trainer


class LogsPrediction(TinyTask):
    def __init__(self, at_step: int = 0) -> None:
        super().__init__()
        self.at_step = at_step

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.trainer.global_step >= self.at_step:
            self.log("pred", self(batch[0]))  # shape (8, 1)
        return loss


@pytest.mark.parametrize("checkpointing", [True, False])
def test_non_scalar_tensor_fails_at_the_step_that_logs_it(tmp_path, checkpointing):
    # Default logger and (optionally) default checkpointing: what a user runs.
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=2, default_root_dir=str(tmp_path),
                              enable_progress_bar=False, enable_checkpointing=checkpointing, log_every_n_steps=4)
    with pytest.raises(StepError) as info:
        trainer.fit(LogsPrediction(at_step=3), loader(n=64))
    message = str(info.value)
    assert "self.log('pred') got a tensor of shape (8, 1)" in message, message
    assert "in training_step" in message and "global step 3" in message, message
    assert trainer.global_step == 3  # it stopped there, not at a logging step or at the checkpoint save
    assert "pred" not in trainer.callback_metrics
    for path in Path(tmp_path).rglob("metrics.csv"):
        with open(path) as f:
            assert not any("pred" in row for row in csv.reader(f))


def test_log_dict_names_the_bad_key_and_wrong_types_are_refused(tmp_path):
    class LogsDict(TinyTask):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def on_train_epoch_end(self):
            self.log_dict({"fine": torch.tensor(1.0), "bad": self.value})

    cases = [
        (torch.ones(3), r"self.log\('bad'\) got a tensor of shape \(3,\) in on_train_epoch_end"),
        ("text", r"self.log\('bad'\) got a str in on_train_epoch_end"),
        ([1.0, 2.0], r"self.log\('bad'\) got a list in on_train_epoch_end"),
        ({"a": 1.0}, r"self.log\('bad'\) got a dict .*log_dict"),
    ]
    for value, expected in cases:
        trainer = quiet_trainer(tmp_path, max_epochs=1)
        with pytest.raises(StepError, match=expected):
            trainer.fit(LogsDict(value), loader(n=16))
        assert "bad" not in trainer.callback_metrics
    # Numbers of every kind are scalars (NumPy's too), and one-element tensors of any shape.
    import numpy as np

    for value in (3, 2.5, True, np.float32(1.5), np.int64(2), torch.ones(1, 1)):
        trainer = quiet_trainer(tmp_path, max_epochs=1)
        trainer.fit(LogsDict(value), loader(n=16))
        assert float(trainer.callback_metrics["bad"]) == float(np.asarray(value).reshape(()))


def test_non_scalar_metric_is_refused_naming_the_metric_and_hook(tmp_path):
    # A torchmetrics Metric's value is known only when it is computed: per class (average=None) is 3 values.
    class PerClass(TinyTask):
        def __init__(self):
            super().__init__()
            self.acc = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average=None)

        def validation_step(self, batch, batch_idx):
            x, _ = batch
            preds = torch.arange(x.shape[0]) % 3
            self.acc.update(preds, preds)
            self.log("val/acc", self.acc)

    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=1, default_root_dir=str(tmp_path),
                              enable_progress_bar=False)
    with pytest.raises(StepError) as info:
        trainer.validate(PerClass(), loader(n=16))
    message = str(info.value)
    assert "self.log('val/acc')" in message and "torchmetrics" in message and "shape (3,)" in message, message
    assert "in validation_step" in message, message
    assert "val/acc" not in trainer.callback_metrics

    # On step: the Metric's forward value is checked when it is logged.
    class PerClassStep(TinyTask):
        def __init__(self):
            super().__init__()
            self.acc = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average=None)

        def training_step(self, batch, batch_idx):
            preds = torch.arange(batch[0].shape[0]) % 3
            self.acc(preds, preds)
            self.log("train/acc", self.acc)
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=50)
    with pytest.raises(StepError, match=r"self.log\('train/acc'\) .*shape \(3,\) in training_step at global step 0"):
        trainer.fit(PerClassStep(), loader(n=16))
