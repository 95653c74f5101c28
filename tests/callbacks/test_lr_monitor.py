from __future__ import annotations

import pytest
import torch
from tests.helpers.fake_trainer import FakeTrainer

from dltrain.callbacks.lr_monitor import LearningRateMonitor
from dltrain.errors import ConfigurationError


class FakeTask:
    def __init__(self):
        self.logged: list[tuple[str, float, bool, bool]] = []

    def log(self, name, value, *, on_step=None, on_epoch=None, **kw):
        self.logged.append((name, value, on_step, on_epoch))


def _params(n=1):
    return [torch.nn.Parameter(torch.zeros(1)) for _ in range(n)]


def test_names_as_lightning():
    adam = torch.optim.Adam(_params(), lr=1e-3)
    adam2 = torch.optim.Adam(_params(), lr=2e-3)
    sgd = torch.optim.SGD([{"params": _params()}, {"params": _params(), "lr": 0.5}], lr=0.1, momentum=0.9)
    named = torch.optim.AdamW(
        [{"params": _params(), "name": "backbone"}, {"params": _params(), "name": "head"}]
    )
    values = LearningRateMonitor(log_momentum=True).read([adam, adam2, sgd, named])
    assert values == {
        "lr-Adam": 1e-3,
        "lr-Adam-momentum": 0.9,
        "lr-Adam-1": 2e-3,
        "lr-Adam-1-momentum": 0.9,
        "lr-SGD/pg1": 0.1,
        "lr-SGD/pg1-momentum": 0.9,
        "lr-SGD/pg2": 0.5,
        "lr-SGD/pg2-momentum": 0.9,
        "lr-AdamW/backbone": 1e-3,
        "lr-AdamW/backbone-momentum": 0.9,
        "lr-AdamW/head": 1e-3,
        "lr-AdamW/head-momentum": 0.9,
    }


def test_step_interval_logs_rate_used_by_the_step():
    opt = torch.optim.SGD(_params(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    trainer = FakeTrainer(global_step=0, log_every_n_steps=2, optimizers=[opt])
    task = FakeTask()
    cb = LearningRateMonitor()
    for _ in range(6):  # the Trainer's order: hook, optimizer step, global_step += 1, scheduler, logging
        cb.on_before_optimizer_step(trainer, task, opt)
        opt.step()
        trainer.global_step += 1
        sched.step()
    # steps 2, 4, 6 are logged, each with the rate it used (the schedule gives 1 / step to step `step`).
    assert task.logged == [("lr-SGD", pytest.approx(1 / s), True, False) for s in (2, 4, 6)]


def test_epoch_interval():
    opt = torch.optim.SGD(_params(), lr=0.1)
    trainer = FakeTrainer(global_step=0, log_every_n_steps=1, optimizers=[opt])
    task = FakeTask()
    cb = LearningRateMonitor(logging_interval="epoch")
    for _epoch in range(2):
        cb.on_train_epoch_start(trainer, task)
        cb.on_before_optimizer_step(trainer, task, opt)  # nothing per step
        trainer.global_step += 1
        cb.on_train_epoch_end(trainer, task)
        opt.param_groups[0]["lr"] /= 10  # an epoch scheduler stepping after the epoch
    assert task.logged == [("lr-SGD", 0.1, False, True), ("lr-SGD", pytest.approx(0.01), False, True)]


def test_bad_interval():
    with pytest.raises(ConfigurationError):
        LearningRateMonitor(logging_interval="batch")
