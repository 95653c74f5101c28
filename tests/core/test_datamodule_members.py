"""The rest of Lightning's ``LightningDataModule``: its batch-transfer hooks (which replace the task's), ``from_datasets``,
``load_from_checkpoint`` (from the hyperparameters a checkpoint keeps), ``on_exception``, ``name`` (issue 22: the
members ``LightningDataModule`` has that ``DataModule`` lacked)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

import dltrain
from dltrain.callbacks import ModelCheckpoint
from tests.helpers.tasks import TinyTask, make_data


class Seen(TinyTask):
    """Records the first feature of each training and validation batch it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.train_seen: list[float] = []
        self.val_seen: list[float] = []

    def training_step(self, batch, batch_idx):
        self.train_seen.append(float(batch[0][0, 0]))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.val_seen.append(float(batch[0][0, 0]))


class Doubles(Seen):
    def on_after_batch_transfer(self, batch, dataloader_idx):
        return [batch[0] * 2, batch[1]]


class Augmenting(dltrain.DataModule):
    """Adds 1000 to the features on the device, and says which loader each batch came from."""

    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.calls: list[tuple[str, int]] = []
        self.restored: list[dict] = []
        self.exceptions: list[str] = []

    def train_dataloader(self):
        return DataLoader(make_data(16), batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        return DataLoader(make_data(16), batch_size=self.hparams.batch_size)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.calls.append(("before", dataloader_idx))
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx):
        self.calls.append(("after", dataloader_idx))
        return [batch[0] + 1000, batch[1]]

    def state_dict(self):
        return {"cursor": 3}

    def load_state_dict(self, state):
        self.restored.append(state)

    def on_exception(self, exception):
        self.exceptions.append(type(exception).__name__)


def _trainer(tmp_path, **kwargs) -> dltrain.Trainer:
    return dltrain.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                           default_root_dir=str(tmp_path), max_epochs=1, **kwargs)


def test_the_datamodules_transfer_hooks_replace_the_tasks(tmp_path):
    data = make_data(16)
    task, dm = Seen(), Augmenting()
    _trainer(tmp_path, enable_checkpointing=False, num_sanity_val_steps=0).fit(task, datamodule=dm)
    assert task.train_seen[0] == pytest.approx(float(data[0][0][0]) + 1000)
    assert task.val_seen[0] == pytest.approx(float(data[0][0][0]) + 1000)
    assert dm.calls[:2] == [("before", 0), ("after", 0)]
    # Both override on_after_batch_transfer: the datamodule's runs, with a warning (as in Lightning).
    task = Doubles()
    with pytest.warns(UserWarning, match="Doubles and Augmenting both override on_after_batch_transfer"):
        _trainer(tmp_path, enable_checkpointing=False, num_sanity_val_steps=0).fit(task, datamodule=Augmenting())
    assert task.train_seen[0] == pytest.approx(float(data[0][0][0]) + 1000)


def test_from_datasets_makes_the_loaders(tmp_path):
    train, val = make_data(32), make_data(16)

    class Stream(IterableDataset):
        def __iter__(self):
            yield from (train[i] for i in range(8))

    dm = dltrain.DataModule.from_datasets(train_dataset=train, val_dataset=[val, val], test_dataset=val,
                                          predict_dataset=Stream(), batch_size=8)
    assert len(dm.train_dataloader()) == 4 and dm.train_dataloader().batch_size == 8
    assert isinstance(dm.train_dataloader().sampler, torch.utils.data.RandomSampler)  # training data shuffles
    assert [len(v) for v in dm.val_dataloader()] == [2, 2]
    assert isinstance(dm.test_dataloader().sampler, torch.utils.data.SequentialSampler)
    assert len(list(dm.predict_dataloader())) == 1  # an iterable dataset is not shuffled (it cannot be)
    trainer = _trainer(tmp_path, enable_checkpointing=False)
    trainer.fit(TinyTask(), datamodule=dltrain.DataModule.from_datasets(train, val, batch_size=8))
    assert trainer.global_step == 4 and trainer.num_val_batches == [2]
    with pytest.raises(dltrain.ConfigurationError, match="no predict_dataloader"):
        dltrain.DataModule.from_datasets(train_dataset=train).predict_dataloader()
    # constructor arguments of a subclass pass through; others are dropped, as in Lightning
    built = Augmenting.from_datasets(train_dataset=train, batch_size=4, batch_size_unused=1)
    assert isinstance(built, Augmenting) and built.hparams.batch_size == 8


def test_load_from_checkpoint_rebuilds_the_datamodule_from_its_hyperparameters(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    _trainer(tmp_path, callbacks=[ckpt]).fit(TinyTask(), datamodule=Augmenting(batch_size=4))
    dm = Augmenting.load_from_checkpoint(ckpt.best_model_path)
    assert dm.hparams.batch_size == 4 and dm.restored == [{"cursor": 3}]
    dm = Augmenting.load_from_checkpoint(ckpt.best_model_path, batch_size=2)  # keywords override
    assert dm.hparams.batch_size == 2


def test_on_exception_reaches_the_datamodule_and_name_exists(tmp_path):
    class Fails(TinyTask):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("boom")

    dm = Augmenting()
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(tmp_path, enable_checkpointing=False).fit(Fails(), datamodule=dm)
    assert dm.exceptions == ["RuntimeError"]
    assert dltrain.DataModule.name is None and Augmenting().name is None
