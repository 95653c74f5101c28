from __future__ import annotations

import timeit

import pytest
import torch
from tests.helpers.fake_trainer import FakeTrainer

from dltrain.callbacks import throughput as tp
from dltrain.callbacks.throughput import ThroughputMonitor, batch_size_of
from dltrain.errors import ConfigurationError


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class FakeTask:
    def __init__(self):
        self.logged: list[tuple[str, float, dict]] = []

    def log(self, name, value, **kw):
        self.logged.append((name, value, kw))

    def last(self, name):
        return [v for n, v, _ in self.logged if n == name][-1]


def _trainer(**kw):
    base = dict(global_step=0, log_every_n_steps=2, num_training_batches=float("inf"), world_size=1)
    base.update(kw)
    base.setdefault("data_parallel_size", base["world_size"])  # no tensor parallelism
    return FakeTrainer(**base)


def _epoch(cb, trainer, task, clock, n, wait=0.1, step=0.3, batch=None, accumulate=1, validate_at=None):
    batch = torch.zeros(8, 3) if batch is None else batch
    cb.on_train_epoch_start(trainer, task)
    for i in range(n):
        clock.t += wait
        cb.on_train_batch_start(trainer, task, batch, i)
        clock.t += step
        if (i + 1) % accumulate == 0:
            cb.on_before_optimizer_step(trainer, task, None)
            trainer.global_step += 1
        cb.on_train_batch_end(trainer, task, None, batch, i)
        if validate_at == i:
            cb.on_validation_epoch_start(trainer, task)
            clock.t += 50.0  # a long validation run: not counted anywhere
            cb.on_validation_epoch_end(trainer, task)
    cb.on_train_epoch_end(trainer, task)


def test_rates_and_data_wait_fraction(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(tp, "perf_counter", clock)
    cb, task, trainer = ThroughputMonitor(window=4), FakeTask(), _trainer()
    _epoch(cb, trainer, task, clock, n=10, validate_at=4)
    step_logs = [(n, v) for n, v, kw in task.logged if kw["on_step"]]
    # logged before steps 2, 4, 6, 8, 10 (the window ends at the previous batch)
    assert [v for n, v in step_logs if n == "throughput/batches_per_sec"] == pytest.approx([2.5] * 5)
    assert task.last("throughput/samples_per_sec") == pytest.approx(8 / 0.4)
    assert task.last("throughput/steps_per_sec") == pytest.approx(2.5)
    assert task.last("throughput/data_wait_fraction") == pytest.approx(0.25)
    assert "throughput/global_samples_per_sec" not in dict(step_logs)
    epoch = {n: v for n, v, kw in task.logged if kw["on_epoch"]}
    assert epoch == pytest.approx(
        {
            "throughput/epoch_samples_per_sec": 20.0,
            "throughput/epoch_batches_per_sec": 2.5,
            "throughput/epoch_steps_per_sec": 2.5,
            "throughput/epoch_data_wait_fraction": 0.25,
        }
    )


def test_accumulation_slow_loader_and_distributed(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(tp, "perf_counter", clock)
    cb = ThroughputMonitor(window=100, batch_size_fn=lambda b: 4, prog_bar=True)
    task, trainer = FakeTask(), _trainer(log_every_n_steps=1, world_size=2, num_training_batches=8)
    _epoch(cb, trainer, task, clock, n=8, wait=0.3, step=0.1, accumulate=2)
    assert task.last("throughput/steps_per_sec") == pytest.approx(3 / 2.8)  # 7 batches, 3 steps before step 4
    assert task.last("throughput/epoch_steps_per_sec") == pytest.approx(1.25)
    assert task.last("throughput/batches_per_sec") == pytest.approx(2.5)
    assert task.last("throughput/global_samples_per_sec") == pytest.approx(20.0)
    assert task.last("throughput/data_wait_fraction") == pytest.approx(0.75)
    bar = {n for n, _, kw in task.logged if kw.get("prog_bar")}
    assert bar == {"throughput/samples_per_sec", "throughput/batches_per_sec"}
    # Known epoch length: the summary is logged once, at the last batch (before the Trainer's epoch end).
    assert sum(n == "throughput/epoch_data_wait_fraction" for n, _, _ in task.logged) == 1


def test_first_batch_wait_counts_from_epoch_start(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(tp, "perf_counter", clock)
    cb, task, trainer = ThroughputMonitor(), FakeTask(), _trainer()
    cb.on_train_epoch_start(trainer, task)
    clock.t += 3.0  # workers starting
    cb.on_train_batch_start(trainer, task, None, 0)
    clock.t += 1.0
    trainer.global_step += 1
    cb.on_train_batch_end(trainer, task, None, {"x": [1, 2]}, 0)  # no tensor: no samples/s
    cb.on_train_epoch_end(trainer, task)
    epoch = {n: v for n, v, _ in task.logged}
    assert epoch["throughput/epoch_data_wait_fraction"] == pytest.approx(0.75)
    assert "throughput/epoch_samples_per_sec" not in epoch


def test_batch_size_of():
    assert batch_size_of(torch.zeros(5, 2)) == 5
    assert batch_size_of((torch.zeros(()), torch.zeros(3))) == 1
    assert batch_size_of({"meta": ["a"], "x": torch.zeros(7, 1)}) == 7
    assert batch_size_of([[], (torch.zeros(2),)]) == 2
    assert batch_size_of("text") == 0
    with pytest.raises(ConfigurationError):
        ThroughputMonitor(window=0)


def test_per_step_cost_is_small():
    cb, task, trainer = ThroughputMonitor(), FakeTask(), _trainer(log_every_n_steps=10**9)
    batch = (torch.zeros(4, 2), torch.zeros(4))
    cb.on_train_epoch_start(trainer, task)

    def step():
        cb.on_train_batch_start(trainer, task, batch, 0)
        cb.on_before_optimizer_step(trainer, task, None)
        cb.on_train_batch_end(trainer, task, None, batch, 0)

    per_step = min(timeit.repeat(step, number=2000, repeat=3)) / 2000
    assert per_step < 50e-6  # a few microseconds in practice; generous for loaded CI machines
