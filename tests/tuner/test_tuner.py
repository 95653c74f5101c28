"""dltrain.tuner.Tuner and the finder callbacks (issue 22 items 2 and 4): the range test and the batch-size
search, the state they leave behind, and the same answer on every rank under torchrun."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

import dltrain
from dltrain.callbacks import BatchSizeFinder, LearningRateFinder
from dltrain.errors import ConfigurationError
from dltrain.tuner import LRFinder, Tuner
from tests.tuner._tune_ddp import Task


def trainer_for(tmp_path, **kwargs) -> dltrain.Trainer:
    kwargs.setdefault("max_epochs", 1)
    return dltrain.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), log_every_n_steps=1, **kwargs)


def weights(task) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.state_dict().items()}


def test_lr_find_then_fit_equals_a_fit_with_that_lr(tmp_path):
    torch.manual_seed(0)
    task = Task()
    before = weights(task)
    trainer = trainer_for(tmp_path / "a", seed=3)
    finder = Tuner(trainer).lr_find(task, min_lr=1e-5, max_lr=1.0, num_training=40)
    assert isinstance(finder, LRFinder) and len(finder.results["lr"]) == len(finder.results["loss"]) <= 40
    lr = finder.suggestion()
    assert lr is not None and 1e-5 < lr < 1.0 and task.lr == lr
    assert all(torch.equal(v, before[k]) for k, v in weights(task).items())  # the search left no trace
    assert trainer.global_step == 0 and trainer.callbacks and trainer.loggers
    fig = finder.plot(suggest=True)
    import matplotlib.figure

    assert isinstance(fig, matplotlib.figure.Figure)
    trainer.fit(task)
    # The same fit on a fresh Trainer with that learning rate set by hand: bitwise equal.
    torch.manual_seed(0)
    again = Task(lr=lr)
    fresh = trainer_for(tmp_path / "b", seed=3)
    fresh.fit(again)
    assert trainer.global_step == fresh.global_step == 128
    for k, v in weights(again).items():
        assert torch.equal(weights(task)[k], v), k


def test_lr_find_follows_the_exponential_range_and_stops_on_divergence(tmp_path):
    finder = Tuner(trainer_for(tmp_path)).lr_find(Task(), min_lr=1e-3, max_lr=1e3, num_training=60,
                                                  update_attr=False)
    lrs = finder.results["lr"]
    assert lrs[0] == pytest.approx(1e-3) and all(b > a for a, b in itertools.pairwise(lrs))
    assert len(lrs) < 60  # the loss diverged at large learning rates: stopped early
    linear = Tuner(trainer_for(tmp_path)).lr_find(Task(), min_lr=0.001, max_lr=0.01, num_training=10,
                                                  mode="linear", update_attr=False)
    # Lightning's schedule: the start, then (i + 1) / n of the way at step i
    assert linear.results["lr"] == pytest.approx([0.001] + [0.001 + (i + 1) / 10 * 0.009 for i in range(1, 10)])


def test_lr_find_needs_an_lr_attribute(tmp_path):
    class NoLr(Task):
        def __init__(self):
            super().__init__()
            del self.lr
            self.hparams.pop("lr")
            self.rate = 0.1

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.rate)

    with pytest.raises(ConfigurationError, match="'lr' or 'learning_rate'"):
        Tuner(trainer_for(tmp_path)).lr_find(NoLr())
    task = NoLr()
    Tuner(trainer_for(tmp_path)).lr_find(task, attr_name="rate", num_training=20)
    assert task.rate != 0.1


@pytest.mark.parametrize("mode, expected", [("power", 16), ("binsearch", 24)])
def test_scale_batch_size_stops_at_the_out_of_memory_size(tmp_path, mode, expected):
    task = Task(oom_above=24)  # trials above 24 samples run out of memory (injected)
    before = weights(task)
    trainer = trainer_for(tmp_path)
    size = Tuner(trainer).scale_batch_size(task, mode=mode, init_val=2, margin=0.0)
    assert size == task.batch_size == expected
    assert all(torch.equal(v, before[k]) for k, v in weights(task).items())
    assert trainer.global_step == 0 and trainer.max_steps == -1 and trainer.limit_val_batches is None
    trainer.fit(task)
    assert trainer.global_step == -(-512 // expected)


def test_scale_batch_size_limits(tmp_path):
    task = Task()  # never runs out of memory: the limits stop it
    assert Tuner(trainer_for(tmp_path)).scale_batch_size(task, init_val=2, max_trials=3) == 8
    assert Tuner(trainer_for(tmp_path)).scale_batch_size(Task(), init_val=2, max_val=64) == 64
    assert Tuner(trainer_for(tmp_path)).scale_batch_size(Task(), init_val=128) == 512  # the dataset's length
    with pytest.raises(ConfigurationError, match="passed in"):
        Tuner(trainer_for(tmp_path)).scale_batch_size(Task(), train_dataloaders=Task().train_dataloader())
    with pytest.raises(ConfigurationError, match="'power' or 'binsearch'"):
        Tuner(trainer_for(tmp_path)).scale_batch_size(Task(), mode="linear")


def test_finder_callbacks_search_before_the_fit_trains(tmp_path):
    lr_cb, bs_cb = LearningRateFinder(num_training_steps=20), BatchSizeFinder(init_val=2, max_trials=4)
    task = Task(oom_above=1 << 20)
    trainer = trainer_for(tmp_path, callbacks=[lr_cb, bs_cb])
    trainer.fit(task)
    assert lr_cb.optimal_lr is not None and task.lr == lr_cb.optimal_lr.suggestion()
    assert bs_cb.optimal_batch_size == task.batch_size == 16
    assert trainer.global_step == 512 // 16
    with pytest.raises(ConfigurationError, match="passed to fit"):
        trainer_for(tmp_path, callbacks=[BatchSizeFinder()]).fit(Task(), Task().train_dataloader())


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_every_rank_finds_the_same_values_under_torchrun(tmp_path, strategy):
    from tests.helpers.distributed import run_distributed

    script = Path(__file__).with_name("_tune_ddp.py")
    run_distributed(script, ["--out", str(tmp_path), "--strategy", strategy], nproc=2, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["lr"] == ranks[1]["lr"] == ranks[0]["suggestion"] is not None
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["batch_size"] == ranks[1]["batch_size"] == ranks[0]["task_batch_size"] == 24
    assert ranks[0]["steps"] == ranks[1]["steps"] == -(-512 // (2 * 24))
