from __future__ import annotations

import io
import timeit
from types import SimpleNamespace

import pytest

from dltrain.callbacks import progress as pb
from dltrain.callbacks.progress import ProgressBar


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class TTY(io.StringIO):
    def isatty(self):
        return True


def _trainer(**kw):
    base = dict(
        current_epoch=0,
        max_epochs=2,
        num_training_batches=10,
        progress_bar_metrics={},
        is_global_zero=True,
        stage="fit",
        global_step=0,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def _train_epoch(bar, trainer, clock, n=10, dt=0.1):
    bar.on_train_epoch_start(trainer, None)
    for i in range(n):
        clock.t += dt
        trainer.progress_bar_metrics = {"train/loss": 1.0 / (i + 1)}
        bar.on_train_batch_end(trainer, None, None, None, i)
    bar.on_train_epoch_end(trainer, None)


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(pb, "monotonic", c)
    return c


def test_non_tty_writes_sparse_plain_lines(clock):
    out = io.StringIO()
    bar = ProgressBar(log_interval_s=0.35, file=out)
    trainer = _trainer()
    bar.setup(trainer, None, "fit")
    _train_epoch(bar, trainer, clock)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # refreshes after batches 4 and 8 (0.35 s apart), then the epoch-end line
    assert [line.split(":")[1].split()[1] for line in lines] == ["4/10", "8/10", "10/10"]
    assert lines[0].startswith("Epoch 1/2:") and "loss=0.25" in lines[0]
    assert "it/s" in lines[-1] and "train/loss=0.1" in lines[-1]


def test_tty_bar_with_validation_and_test(clock):
    out = TTY()
    bar = ProgressBar(refresh_rate_s=0.25, file=out)
    trainer = _trainer(num_val_batches=[4], num_training_batches=float("inf"))
    bar.setup(trainer, None, "fit")
    bar.on_train_epoch_start(trainer, None)
    for i in range(5):
        clock.t += 0.1
        bar.on_train_batch_end(trainer, None, None, None, i)
    bar.on_validation_epoch_start(trainer, None)
    for i in range(4):
        clock.t += 0.1
        bar.on_validation_batch_end(trainer, None, None, None, i)
    trainer.progress_bar_metrics = {"val/acc": 0.75}
    bar.on_validation_epoch_end(trainer, None)
    bar.on_train_epoch_end(trainer, None)
    trainer.stage = "test"
    bar.on_test_epoch_start(trainer, None)
    bar.on_test_batch_end(trainer, None, None, None, 0)
    bar.on_test_epoch_end(trainer, None)
    bar.teardown(trainer, None, "test")
    text = out.getvalue()
    assert "Epoch 1/2: 5it" in text  # unknown length: a counter, no percentage
    assert "Validation: 100%" in text and "4/4" in text and "val/acc=0.75" in text
    assert "Test" in text
    assert not bar._bars


def test_only_global_rank_zero(clock):
    out = TTY()
    bar = ProgressBar(file=out)
    trainer = _trainer(is_global_zero=False)
    bar.setup(trainer, None, "fit")
    _train_epoch(bar, trainer, clock, dt=10.0)
    assert out.getvalue() == ""


def test_exception_closes_bars(clock):
    out = TTY()
    bar = ProgressBar(file=out)
    trainer = _trainer()
    bar.setup(trainer, None, "fit")
    bar.on_train_epoch_start(trainer, None)
    bar.on_exception(trainer, None, RuntimeError("boom"))
    assert not bar._bars


def test_predict_bar_opens_lazily(clock):
    out = io.StringIO()
    bar = ProgressBar(log_interval_s=0.0, file=out)
    trainer = _trainer(stage="predict")
    bar.setup(trainer, None, "predict")
    for i in range(3):
        clock.t += 1
        bar.on_predict_batch_end(trainer, None, None, None, i)
    bar.teardown(trainer, None, "predict")
    assert out.getvalue().splitlines()[-1].startswith("Predict: 3it")


def test_per_batch_cost_between_refreshes():
    bar = ProgressBar(refresh_rate_s=3600, file=TTY())
    trainer = _trainer(num_training_batches=10**9)
    bar.setup(trainer, None, "fit")
    bar.on_train_epoch_start(trainer, None)
    per_batch = min(
        timeit.repeat(lambda: bar.on_train_batch_end(trainer, None, None, None, 5), number=20000, repeat=3)
    )
    bar.teardown(trainer, None, "fit")
    assert per_batch / 20000 < 5e-6  # ~0.2 us in practice; generous for loaded machines
