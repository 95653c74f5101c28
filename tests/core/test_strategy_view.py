"""``trainer.strategy`` answers to Lightning's strategy names (``reduce``, ``lightning_module``, ...) and to Fabric's.

Lightning code calls ``self.trainer.strategy.reduce(x, reduce_op="sum")`` from a task; with Fabric's strategy object
behind ``trainer.strategy`` that was an AttributeError (issue 22). On two processes the same names are checked against
Lightning itself in tests/lightning_compat (scripts/ema_fsdp2.py).
"""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.strategies import SingleDeviceStrategy

import dltrain
from dltrain.strategies import StrategyView
from tests.helpers.tasks import TinyTask, loader, quiet_trainer


class UsesStrategy(TinyTask):
    """Reaches the strategy from its steps the way Lightning code does."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        strategy = self.trainer.strategy
        summed = strategy.reduce(loss.detach(), reduce_op="sum")
        mean = strategy.reduce(loss.detach())  # Lightning's default reduce_op: "mean"
        strategy.barrier("step")
        self.seen.append((summed.item(), mean.item(), loss.item(), strategy.broadcast(batch_idx, src=0),
                          strategy.reduce("not a tensor"), strategy.lightning_module is self))
        return loss


def test_a_task_reaches_the_strategy_under_lightnings_names(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    task = UsesStrategy()
    trainer.fit(task, loader(n=32))
    assert len(task.seen) == 4
    for batch_idx, (summed, mean, loss, sent, other, is_task) in enumerate(task.seen):
        assert summed == mean == loss  # one process: a reduction is the value itself
        assert sent == batch_idx and other == "not a tensor" and is_task

    strategy = trainer.strategy
    assert isinstance(strategy, StrategyView) and trainer.strategy is strategy
    assert isinstance(strategy.fabric_strategy, SingleDeviceStrategy)
    assert strategy.fabric_strategy is trainer.fabric.strategy
    # Lightning's names for what the Trainer and Fabric hold
    assert strategy.model is trainer.model and strategy.optimizers == trainer.optimizers
    assert strategy.optimizers and strategy.optimizers[0] is trainer.optimizers[0]
    assert strategy.precision_plugin is strategy.fabric_strategy.precision
    # Fabric's names pass through
    assert strategy.root_device == torch.device("cpu") and strategy.is_global_zero
    assert strategy.checkpoint_io is strategy.fabric_strategy.checkpoint_io
    assert "SingleDeviceStrategy" in repr(strategy)


def test_remove_checkpoint_deletes_through_the_checkpoint_io(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    path = tmp_path / "old.ckpt"
    path.write_bytes(b"x")
    trainer.strategy.remove_checkpoint(str(path))
    assert not path.exists()


def test_a_name_neither_has_is_an_attribute_error_naming_fabrics_class(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    with pytest.raises(AttributeError, match=r"SingleDeviceStrategy.*no_such_thing"):
        trainer.strategy.no_such_thing  # noqa: B018
    assert getattr(trainer.strategy, "device_mesh", None) is None  # what Task.device_mesh relies on


def test_the_view_is_what_callbacks_get(tmp_path):
    got: list[object] = []

    class Probe(dltrain.Callback):
        def on_fit_start(self, trainer, task):
            got.append(trainer.strategy.reduce(torch.tensor([1.0, 2.0]), reduce_op="sum"))

    quiet_trainer(tmp_path, max_epochs=1, callbacks=[Probe()]).fit(TinyTask(), loader(n=16))
    assert torch.equal(got[0], torch.tensor([1.0, 2.0]))
