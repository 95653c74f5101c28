"""CUDA-only behaviour (skipped without a GPU): precisions, device placement, no syncs per step, FSDP, resume."""

from __future__ import annotations

import warnings

import pytest
import torch

import dltrain
from dltrain.callbacks import ModelCheckpoint
from tests.helpers.tasks import TinyTask, loader, quiet_trainer

pytestmark = pytest.mark.cuda


class DeviceTask(TinyTask):
    def __init__(self):
        super().__init__()
        self.seen_devices: set[str] = set()
        self.dtypes: set[torch.dtype] = set()

    def on_after_batch_transfer(self, batch, dataloader_idx=0):
        self.seen_devices.add(batch[0].device.type)
        return batch

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.dtypes.add(out.dtype)
        loss = torch.nn.functional.mse_loss(out.float(), y.float())
        self.log("train/loss", loss)
        return loss


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed", "bf16-true"])
def test_precisions_train_on_cuda(tmp_path, precision):
    torch.manual_seed(0)
    task = DeviceTask()
    task.lr = 0.01
    trainer = quiet_trainer(tmp_path, accelerator="cuda", devices=1, precision=precision, max_epochs=3,
                            log_every_n_steps=4)
    first = trainer.validate(task, loader(n=64))[0]["val/loss"]
    trainer.fit(task, loader(n=96))
    last = trainer.validate(task, loader(n=64))[0]["val/loss"]
    assert task.seen_devices == {"cuda"}
    assert next(task.parameters()).device.type == "cuda"
    expected = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16,
                "bf16-true": torch.bfloat16}[precision]
    assert task.dtypes == {expected}
    assert last < first


def test_no_host_device_sync_between_logging_steps(tmp_path):
    """torch's sync debug mode warns on every synchronising call: only logging steps may have them."""
    steps_with_sync: list[int] = []

    class Watch(dltrain.Callback):
        def on_train_batch_start(self, trainer, task, batch, batch_idx):
            torch.cuda.set_sync_debug_mode("error")  # raises at the first synchronising call, with its traceback

        def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
            torch.cuda.set_sync_debug_mode("default")

    task = TinyTask()
    trainer = quiet_trainer(tmp_path, accelerator="cuda", devices=1, max_epochs=1, log_every_n_steps=5,
                            callbacks=[Watch()])
    data = [(x.cuda(), y.cuda()) for x, y in loader(n=160, batch_size=8)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from dltrain.loop import FitLoop

        original = FitLoop._log_step

        def log_step(self):
            torch.cuda.set_sync_debug_mode("default")
            original(self)

        FitLoop._log_step = log_step
        try:
            trainer.fit(task, data)
        finally:
            FitLoop._log_step = original
    syncs = [w for w in caught if "called a synchronizing" in str(w.message).lower()]
    steps_with_sync.extend(range(len(syncs)))
    assert trainer.global_step == 20
    assert not syncs, [str(w.message)[:200] for w in syncs[:5]]


def test_resume_on_cuda_restores_scaler_and_weights(tmp_path):
    def run(crash: bool, resume: bool):
        torch.manual_seed(0)
        task = TinyTask()

        class Crash(dltrain.Callback):
            def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
                if crash and trainer.global_step == 7:
                    raise KeyboardInterrupt

        trainer = quiet_trainer(tmp_path / "run", accelerator="cuda", devices=1, precision="16-mixed",
                                max_epochs=2, deterministic=True, enable_checkpointing=True,
                                callbacks=[ModelCheckpoint(dirpath=tmp_path / "run" / "c", every_n_epochs=1, every_n_train_steps=3),
                                           Crash()])
        torch.manual_seed(1)
        try:
            trainer.fit(task, loader(n=96, shuffle=True), ckpt_path="last" if resume else None)
        except KeyboardInterrupt:
            pass
        return task, trainer

    ref, ref_trainer = run(False, False)
    import shutil

    shutil.rmtree(tmp_path / "run")
    run(True, False)
    task, trainer = run(False, True)
    assert trainer.global_step == ref_trainer.global_step
    for a, b in zip(ref.state_dict().values(), task.state_dict().values()):
        assert torch.equal(a, b)
    scaler = trainer.fabric.strategy.precision.state_dict()
    assert "scale" in scaler


def test_fsdp2_single_gpu_trains_and_checkpoints(tmp_path):
    """strategy="fsdp2" on one GPU (NCCL): trains, writes a sharded checkpoint directory, tests from it, and its
    consolidated file holds the whole model."""
    from dltrain import checkpoint as ckpt_io

    task = TinyTask()
    trainer = quiet_trainer(tmp_path, accelerator="cuda", devices=1, strategy="fsdp2", max_epochs=2,
                            precision="bf16-mixed", enable_checkpointing=True)
    trainer.fit(task, loader(n=64))
    trainer.save_checkpoint(tmp_path / "fsdp2.ckpt")
    assert (tmp_path / "fsdp2.ckpt" / "__0_0.distcp").is_file()
    assert ckpt_io.load(tmp_path / "fsdp2.ckpt")["loops"]["global_step"] == 16
    full = ckpt_io.load(ckpt_io.consolidate(tmp_path / "fsdp2.ckpt", tmp_path / "full.ckpt"))
    assert set(full["state_dict"]) == set(TinyTask().state_dict())
    assert all(v.dtype == torch.float32 for v in full["state_dict"].values())  # bf16 compute, float32 weights
    metrics = quiet_trainer(tmp_path, accelerator="cuda", devices=1, strategy="fsdp2").test(
        TinyTask(), loader(n=32), ckpt_path=str(tmp_path / "fsdp2.ckpt"))
    assert "test/loss" in metrics[0]


def test_nonfinite_loss_on_cuda_names_the_first_bad_step_or_is_skipped(tmp_path):
    import math

    class NanAt(TinyTask):
        def __init__(self, bad: set[int]):
            super().__init__()
            self.bad = bad

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * math.nan if self.trainer.global_step in self.bad else loss

    # "raise": checked without a per-step sync, at the next logging step, naming the first bad step.
    trainer = quiet_trainer(tmp_path / "raise", accelerator="cuda", devices=1, max_epochs=1, log_every_n_steps=5)
    with pytest.raises(dltrain.StepError, match="NaN or infinite at global step 7"):
        trainer.fit(NanAt(set(range(7, 100))), loader(n=96, batch_size=8))
    # "skip": the bad step leaves the weights untouched and training goes on.
    task = NanAt({3})
    trainer = quiet_trainer(tmp_path / "skip", accelerator="cuda", devices=1, max_epochs=1, on_nonfinite_loss="skip")
    trainer.fit(task, loader(n=96, batch_size=8))
    assert trainer.loop_state.skipped_nonfinite_steps == 1
    assert all(torch.isfinite(p).all() for p in task.parameters())
