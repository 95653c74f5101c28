"""Bad input gets a clear error: what was wrong, where, and what to do."""

from __future__ import annotations

import math

import pytest
import torch

import dltrain
from dltrain import CheckpointError, ConfigurationError, StepError
from tests.helpers.tasks import TinyTask, loader, quiet_trainer


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        ("adam", "returned str"),
        ({"lr_scheduler": None}, "without 'optimizer'"),
        ([], "returned list"),
        ("two", "returned 2 optimizers"),
        ("bad-interval", "interval='sometimes'"),
        ("plateau-no-monitor", "ReduceLROnPlateau needs a metric"),
    ],
)
def test_configure_optimizers_bad_returns(tmp_path, returned, match):
    class Bad(TinyTask):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            if returned == "two":
                return [opt, torch.optim.SGD(self.parameters(), lr=0.1)]
            if returned == "bad-interval":
                sched = torch.optim.lr_scheduler.StepLR(opt, 1)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "sometimes"}}
            if returned == "plateau-no-monitor":
                return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt)}
            return returned

    with pytest.raises(ConfigurationError, match=match):
        quiet_trainer(tmp_path, max_epochs=1).fit(Bad(), loader(n=16))


def test_training_step_bad_returns(tmp_path):
    class NonScalar(TinyTask):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return (self(x) - y) ** 2

    with pytest.raises(StepError, match=r"loss of shape \(8, 1\) on batch 0.*scalar"):
        quiet_trainer(tmp_path, max_epochs=1).fit(NonScalar(), loader(n=16))

    class NoLoss(TinyTask):
        def training_step(self, batch, batch_idx):
            return {"los": super().training_step(batch, batch_idx)}

    with pytest.raises(StepError, match=r"without a 'loss' entry on batch 0 \(keys: \['los'\]\)"):
        quiet_trainer(tmp_path, max_epochs=1).fit(NoLoss(), loader(n=16))

    class Detached(TinyTask):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx).detach()

    with pytest.raises(StepError, match="does not require grad"):
        quiet_trainer(tmp_path, max_epochs=1).fit(Detached(), loader(n=16))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"accelerator": "tpu-ish"}, "unknown accelerator 'tpu-ish'"),
        ({"strategy": "horovod"}, "unknown strategy 'horovod'"),
        ({"precision": "8-true"}, "unknown precision '8-true'"),
        ({"precision": "16-mixed", "accelerator": "cpu"}, "'16-mixed' needs a GPU"),
        ({"gradient_clip_algorithm": "l3"}, "gradient_clip_algorithm"),
        ({"accumulate_grad_batches": 0}, "accumulate_grad_batches=0"),
    ],
)
def test_bad_trainer_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        dltrain.Trainer(default_root_dir=str(tmp_path), logger=False, **kwargs)


def test_no_stopping_condition_with_unknown_length_warns_as_lightning(tmp_path):
    """Neither max_epochs nor max_steps with a loader of unknown length: Lightning sets max_epochs=1000 and warns
    (dltrain raised a ConfigurationError until 7c95e6c made it Lightning's; this test still expected the error)."""

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from loader(n=16)

    class StopAfterThree(dltrain.Callback):
        epochs: list[int] = []

        def on_train_epoch_start(self, trainer, task):
            self.epochs.append(trainer.current_epoch)

        def on_train_epoch_end(self, trainer, task):
            if trainer.current_epoch == 2:
                trainer.should_stop = True

    trainer = quiet_trainer(tmp_path, callbacks=[StopAfterThree()])
    with pytest.warns(UserWarning, match="max_epochs was not set. Setting it to 1000 epochs"):
        trainer.fit(TinyTask(), Stream())
    assert trainer.max_epochs == 1000 and StopAfterThree.epochs == [0, 1, 2] and trainer.current_epoch == 3
    # With max_steps it runs without the warning (an iterable of batches is a valid loader).
    trainer = quiet_trainer(tmp_path, max_steps=3)
    trainer.fit(TinyTask(), Stream())
    assert trainer.global_step == 3


def test_nonfinite_loss_raises_naming_the_step_or_is_skipped(tmp_path):
    class NanAt(TinyTask):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * math.nan if self.trainer.global_step == 3 else loss

    with pytest.raises(StepError, match=r"loss is nan at global step 3 \(epoch 0, batch 3, rank 0\)"):
        quiet_trainer(tmp_path, max_epochs=1).fit(NanAt(), loader(n=64))

    task = NanAt()
    trainer = quiet_trainer(tmp_path, max_epochs=1, on_nonfinite_loss="skip")
    trainer.fit(task, loader(n=64))
    assert all(torch.isfinite(p).all() for p in task.parameters())
    assert trainer.loop_state.skipped_nonfinite_steps == 1


def test_batch_the_task_cannot_take_names_the_batch(tmp_path):
    data = [(torch.randn(4, 8), torch.randn(4, 1)), (torch.randn(4, 7), torch.randn(4, 1))]
    # The error keeps its own type (a shape mismatch from torch); a note says where, with the batch's shapes.
    with pytest.raises(RuntimeError, match=r"training_step failed on batch 1 .*Tensor\(4, 7\)"):
        quiet_trainer(tmp_path, max_epochs=1).fit(TinyTask(), data)


def test_checkpoint_from_a_different_model_names_keys_and_shapes(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    task = TinyTask()
    trainer.fit(task, loader(n=16))
    path = tmp_path / "a.ckpt"
    trainer.save_checkpoint(path)

    class Wider(TinyTask):
        def __init__(self):
            super().__init__()
            self.model[0] = torch.nn.Linear(8, 48)
            self.model[3] = torch.nn.Linear(48, 1)
            self.head = torch.nn.Linear(1, 1)

    with pytest.raises(CheckpointError, match=r"missing keys \['head.weight', 'head.bias'\].*model.0.weight: "
                                              r"checkpoint \(32, 8\) vs model \(48, 8\)"):
        quiet_trainer(tmp_path, max_epochs=2).fit(Wider(), loader(n=16), ckpt_path=path)


def test_truncated_checkpoint(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(TinyTask(), loader(n=16))
    path = tmp_path / "full.ckpt"
    trainer.save_checkpoint(path)
    data = path.read_bytes()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt' cannot be read.*truncated or corrupt.*full\.ckpt"):
        quiet_trainer(tmp_path, max_epochs=2).fit(TinyTask(), loader(n=16), ckpt_path=bad)


def test_log_outside_a_loop_and_bad_values():
    with pytest.raises(dltrain.DltrainError, match="outside a Trainer loop"):
        TinyTask().log("x", 1.0)


def test_log_non_scalar_tensor(tmp_path):
    class LogsVector(TinyTask):
        def validation_step(self, batch, batch_idx):
            self.log("v", batch[0])

    with pytest.raises(dltrain.DltrainError, match=r"self.log\('v'\) got a tensor of shape \(8, 8\)"):
        quiet_trainer(tmp_path).validate(LogsVector(), loader(n=16))
