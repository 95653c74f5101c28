"""WeightAveraging, EMAWeightAveraging, StochasticWeightAveraging (issue 22 items 2 and 3): the average itself,
validation and checkpoints with the averaged weights, an exact resume, and FSDP2 on two processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.helpers.tasks import TinyTask, loader

import dltrain
from dltrain import checkpoint as ckpt_io
from dltrain.callbacks import (
    EMAWeightAveraging,
    LambdaCallback,
    ModelCheckpoint,
    StochasticWeightAveraging,
    WeightAveraging,
)


def trainer_for(tmp_path, **kwargs) -> dltrain.Trainer:
    kwargs.setdefault("max_epochs", 2)
    return dltrain.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), log_every_n_steps=1, **kwargs)


def weights(task) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.state_dict().items()}


def test_ema_is_the_exponential_average_of_the_weights_after_each_step(tmp_path):
    after_steps: list[dict[str, torch.Tensor]] = []
    record = LambdaCallback(on_train_batch_end=lambda t, m, *a: after_steps.append(weights(m)))
    ema = EMAWeightAveraging(decay=0.7)
    task = TinyTask()
    trainer_for(tmp_path, callbacks=[record, ema]).fit(task, loader(32))
    assert len(after_steps) == 8
    expected = dict(after_steps[0])  # the first update copies
    for w in after_steps[1:]:
        expected = {k: 0.7 * expected[k] + 0.3 * w[k] if w[k].is_floating_point() else expected[k] for k in w}
    final = weights(task)  # training ends with the averaged weights in the task
    for k, v in expected.items():
        if v.is_floating_point():
            torch.testing.assert_close(final[k], v)
    assert not torch.equal(final["model.0.weight"], after_steps[-1]["model.0.weight"])


def test_validation_checkpoint_and_loading_use_the_averaged_weights(tmp_path):
    task = TinyTask()
    trainer = trainer_for(tmp_path, callbacks=[EMAWeightAveraging(decay=0.8)], num_sanity_val_steps=0)
    trainer.fit(task, loader(32), loader(16))
    fit_val = float(trainer.callback_metrics["val/loss"])  # the last epoch's validation, on the averaged weights
    last = trainer.checkpoint_callback.last_model_path
    saved = ckpt_io.load(last)
    assert set(saved["averaged_state_dict"]) == set(saved["state_dict"])
    averaged = TinyTask.load_from_checkpoint(last)  # the averaged weights, as Lightning's
    torch.testing.assert_close(averaged.model[0].weight, task.model[0].weight)
    (by_path,) = trainer.validate(TinyTask(), loader(16), ckpt_path=last, verbose=False)
    assert by_path["val/loss"] == pytest.approx(fit_val, rel=1e-6)
    current = TinyTask()
    current.load_state_dict(saved["state_dict"])  # the weights being trained: not what validation saw
    (plain,) = dltrain.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False).validate(
        current, loader(16), verbose=False)
    assert plain["val/loss"] != pytest.approx(fit_val, rel=1e-4)


class StopAt(dltrain.Callback):
    """Stops the process's fit by an exception after optimizer step ``step`` (a crash)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("make", [lambda: EMAWeightAveraging(decay=0.9, update_starting_at_step=2),
                                  lambda: WeightAveraging()], ids=["ema", "swa-every-step"])
def test_resume_ends_bitwise_equal_to_the_uninterrupted_run(tmp_path, make):
    def run(folder, stop=None, resume=False):
        torch.manual_seed(3)
        task = TinyTask(dropout=0.2)
        callbacks = [make(), ModelCheckpoint(dirpath=folder, every_n_train_steps=3, save_top_k=-1)]
        if stop is not None:
            callbacks.append(StopAt(stop))
        trainer = trainer_for(folder, max_epochs=3, callbacks=callbacks, seed=5)
        trainer.fit(task, loader(40, shuffle=True), loader(16), ckpt_path="last" if resume else None)
        return weights(task)

    reference = run(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", stop=8)
    resumed = run(tmp_path / "cut", resume=True)
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k


def test_stochastic_weight_averaging_averages_the_weights_at_epoch_starts(tmp_path):
    at_starts: list[dict[str, torch.Tensor]] = []
    record = LambdaCallback(on_train_epoch_start=lambda t, m: at_starts.append(weights(m)))
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2)
    task = TinyTask()
    trainer = trainer_for(tmp_path, max_epochs=4, callbacks=[record, swa])
    trainer.fit(task, loader(32))
    # SWA from epoch 2 (1-based): the weights at the starts of epochs 1, 2, 3 (0-based), as Lightning's
    expected = {k: sum(w[k] for w in at_starts[1:]) / 3 for k in at_starts[0]}
    final = weights(task)
    for k, v in expected.items():
        torch.testing.assert_close(final[k], v)


def test_weight_averaging_with_batchnorm_recomputes_statistics(tmp_path):
    class WithNorm(TinyTask):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                             torch.nn.Linear(16, 1))

    task = WithNorm()
    trainer_for(tmp_path, max_epochs=3, callbacks=[StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2)]
                ).fit(task, loader(32))
    bn = task.model[1]
    # Recomputed over one pass with momentum=None: the mean of the batch means of the training data
    data = loader(32)
    with torch.no_grad():
        means = [task.model[0](x).mean(0) for x, _ in data]
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0))
    assert bn.momentum == 0.1


SHARDED = Path(__file__).with_name("_ema_sharded.py")


@pytest.mark.distributed
@pytest.mark.slow
def test_ema_under_fsdp2_on_two_processes_matches_one_process(tmp_path):
    """The averaged copy is kept shard by shard under fsdp2; its result, the checkpoint's averaged weights and
    load_from_checkpoint of the sharded checkpoint all equal one process training on the same global batches."""
    from tests.helpers.distributed import run_distributed

    run_distributed(SHARDED, ["--out", str(tmp_path / "fsdp2"), "--strategy", "fsdp2"], nproc=2, timeout=240)
    import subprocess
    import sys

    subprocess.run([sys.executable, str(SHARDED), "--out", str(tmp_path / "one"), "--strategy", "auto"],
                   check=True, timeout=240, env={"PYTHONPATH": f"{SHARDED.parents[2]}/src:{SHARDED.parents[2]}",
                                                 "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    sharded, one = torch.load(tmp_path / "fsdp2" / "result.pt"), torch.load(tmp_path / "one" / "result.pt")
    for part in ("final", "averaged_in_checkpoint", "loaded"):
        for k, v in one[part].items():
            torch.testing.assert_close(sharded[part][k], v, rtol=1e-5, atol=1e-6, msg=f"{part} {k}")
    assert sharded["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
