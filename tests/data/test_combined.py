"""Several training loaders (issue 13, item 9): Lightning's CombinedLoader modes, resumed at any batch."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import dltrain
from dltrain.callbacks import ModelCheckpoint
from dltrain.data import CombinedLoader
from tests.helpers.tasks import make_model, quiet_trainer


def loaders():
    g = torch.Generator().manual_seed(2)
    a = TensorDataset(torch.randn(48, 8, generator=g), torch.arange(48))  # 6 batches of 8
    b = TensorDataset(torch.randn(24, 8, generator=g), torch.arange(100, 124))  # 3 batches of 8
    return {"a": DataLoader(a, batch_size=8, shuffle=True), "b": DataLoader(b, batch_size=8, shuffle=True)}


class TwoSources(dltrain.Task):
    def __init__(self):
        super().__init__()
        self.model = make_model(dropout=0.2)
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        keys = []
        loss = 0.0
        for part in batch.values():
            if part is not None:
                x, k = part
                loss = loss + F.mse_loss(self.model(x), x[:, :1])
                keys += k.tolist()
        self.seen[self.trainer.global_step] = keys
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def fit(folder, mode, crash_at=None, resume=False):
    torch.manual_seed(0)
    task = TwoSources()
    callbacks = [ModelCheckpoint(dirpath=folder / "ckpt", every_n_epochs=1, every_n_train_steps=1, save_top_k=1)]
    if crash_at is not None:
        class Crash(dltrain.Callback):
            def on_train_batch_end(self, trainer, t, outputs, batch, batch_idx):
                if trainer.global_step == crash_at:
                    raise KeyboardInterrupt

        callbacks.append(Crash())
    trainer = quiet_trainer(folder, max_epochs=2, callbacks=callbacks, enable_checkpointing=True)
    torch.manual_seed(1)
    try:
        trainer.fit(task, CombinedLoader(loaders(), mode=mode), ckpt_path="last" if resume else None)
    except KeyboardInterrupt:
        return None, trainer
    return task, trainer


@pytest.mark.parametrize(("mode", "steps"), [("max_size_cycle", 12), ("min_size", 6), ("max_size", 12)])
def test_modes_and_a_dict_of_loaders(tmp_path, mode, steps):
    task, trainer = fit(tmp_path, mode)
    assert trainer.global_step == steps
    per_epoch = steps // 2
    first = [k for s in range(per_epoch) for k in task.seen[s]]  # seen[step before the step]: epoch 0
    a, b = [k for k in first if k < 100], [k for k in first if k >= 100]
    if mode == "min_size":
        assert len(set(a)) == len(a) == 24  # 3 batches of the longer loader, then the epoch ends
    else:
        assert sorted(a) == list(range(48))
    if mode == "max_size_cycle":
        assert sorted(b) == sorted(list(range(100, 124)) * 2)  # the short loader started over once
    else:
        assert sorted(b) == list(range(100, 124))  # once; max_size then gives None for it


def test_a_plain_dict_trains_like_lightning(tmp_path):
    torch.manual_seed(0)
    task = TwoSources()
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(task, loaders())
    assert trainer.global_step == 6 and len(task.seen[5]) == 16  # both parts in every batch (max_size_cycle)


def test_resume_at_every_batch_is_bitwise_exact(tmp_path):
    """Killed after each step in turn (before and after the short loader starts over, and across the epoch
    boundary), resumed: the same weights and the same samples per step as the uninterrupted run."""
    reference, _ = fit(tmp_path / "ref", "max_size_cycle")
    for crash_at in range(1, 12):
        folder = tmp_path / f"run{crash_at}"
        assert fit(folder, "max_size_cycle", crash_at=crash_at)[0] is None
        resumed, _ = fit(folder, "max_size_cycle", resume=True)
        for (name, x), y in zip(reference.state_dict().items(), resumed.state_dict().values()):
            assert torch.equal(x, y), f"{name} differs after a resume at step {crash_at}"
        for step, keys in resumed.seen.items():
            assert keys == reference.seen[step], f"step {step} after a resume at step {crash_at}"


def test_lightnings_own_combined_loader_is_taken_as_dltrains(tmp_path):
    """``from lightning.pytorch.utilities import CombinedLoader`` is not renamed (it is a utility): a Lightning
    user's script passes Lightning's object. fit asked it for len() before iter() and failed with Lightning's
    'Please call iter(combined_loader) first'. Now: its loaders and mode, as dltrain's CombinedLoader; its
    'sequential' mode as several evaluation loaders; 'sequential' for training refused as Lightning does."""
    from lightning.pytorch.utilities import CombinedLoader as LightningCombined

    class Evaluated(TwoSources):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            x, k = batch
            self.log("val", F.mse_loss(self.model(x), x[:, :1]))

    for mode, steps in [("min_size", 3), ("max_size_cycle", 6)]:
        torch.manual_seed(0)
        task = Evaluated()
        trainer = quiet_trainer(tmp_path / mode, max_epochs=1)
        val = LightningCombined(list(loaders().values()), mode="sequential")
        trainer.fit(task, LightningCombined(loaders(), mode=mode), val)
        assert trainer.global_step == steps and trainer.num_training_batches == steps
        assert trainer.num_val_batches == [6, 3]  # the sequential loaders, one after the other
        assert sorted(trainer.callback_metrics) == ["val/dataloader_idx_0", "val/dataloader_idx_1"]
    results = trainer.validate(task, LightningCombined({"x": loaders()["b"]}, mode="sequential"), verbose=False)
    assert list(results[0]) == ["val"]
    with pytest.raises(dltrain.ConfigurationError, match=r"CombinedLoader\(mode='sequential'\).*training"):
        quiet_trainer(tmp_path / "seq", max_epochs=1).fit(Evaluated(), LightningCombined(loaders(), "sequential"))
    with pytest.raises(dltrain.ConfigurationError, match=r"CombinedLoader\(mode='min_size'\).*evaluation"):
        trainer.validate(task, LightningCombined(loaders(), "min_size"))
