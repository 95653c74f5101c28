"""The Trainer's Lightning arguments of issue 22 item 10: overfit_batches, plugins, enable_autolog_hparams and
weights_only (tests/lightning_compat/scripts/trainer_arguments.py compares them with Lightning's own runs)."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.plugins.precision import MixedPrecision as FabricMixedPrecision

import dltrain
from dltrain.errors import CheckpointError, ConfigurationError
from tests.helpers.tasks import TinyTask, loader


def _trainer(tmp_path, **kwargs):
    kwargs.setdefault("max_epochs", 1)
    return dltrain.Trainer(accelerator="cpu", default_root_dir=tmp_path, log_every_n_steps=1,
                           enable_progress_bar=False, **kwargs)


# ---------------------------------------------------------------------------------------------------- overfit_batches
@pytest.mark.parametrize("value", [-1, 1.5, "2", True])
def test_overfit_batches_refuses_what_lightning_refuses(tmp_path, value):
    with pytest.raises(ConfigurationError, match="overfit_batches"):
        _trainer(tmp_path, overfit_batches=value)


def test_overfit_batches_overrides_the_limits_and_fast_dev_run(tmp_path):
    trainer = _trainer(tmp_path, overfit_batches=3, limit_train_batches=10, limit_val_batches=0.5, fast_dev_run=2)
    assert (trainer.overfit_batches, trainer.limit_train_batches, trainer.limit_val_batches) == (3, 3, 3)
    assert _trainer(tmp_path, overfit_batches=4.0).overfit_batches == 4  # a whole float is a number of batches
    trainer = _trainer(tmp_path)
    assert trainer.overfit_batches == 0.0 and trainer.limit_train_batches is None


def test_overfit_batches_reads_shuffled_loaders_in_order_with_a_warning(tmp_path):
    class Seen(TinyTask):
        def __init__(self):
            super().__init__()
            self.first = []

        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                self.first.append(batch[0][0].clone())
            return super().training_step(batch, batch_idx)

    task = Seen()
    with pytest.warns(UserWarning, match="requested to overfit but enabled") as caught:
        _trainer(tmp_path, max_epochs=3, overfit_batches=2, logger=False).fit(
            task, loader(n=64, shuffle=True), loader(n=32, shuffle=True))
    said = [str(w.message) for w in caught]
    assert any("train dataloader shuffling" in m for m in said) and any("val dataloader shuffling" in m for m in said)
    assert not any("sampler has shuffling enabled" in m for m in said), said  # read in order: nothing to say
    data = loader(n=64).dataset
    assert all(torch.equal(first, data[0][0]) for first in task.first)  # the same first batch every epoch
    assert task.trainer.num_training_batches == 2 and task.trainer.global_step == 6


def test_overfit_batches_reads_a_reloaded_training_loader_in_order_too(tmp_path):
    class Reloads(TinyTask):
        def __init__(self):
            super().__init__()
            self.first = []

        def train_dataloader(self):
            return loader(n=64, shuffle=True)

        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                self.first.append(batch[0][0].clone())
            return super().training_step(batch, batch_idx)

    task = Reloads()
    with pytest.warns(UserWarning, match="train dataloader shuffling"):
        _trainer(tmp_path, max_epochs=4, overfit_batches=2, logger=False,
                 reload_dataloaders_every_n_epochs=1).fit(task)
    data = loader(n=64).dataset
    assert len(task.first) == 4 and all(torch.equal(first, data[0][0]) for first in task.first)


# ---------------------------------------------------------------------------------------------------- plugins
def test_plugins_that_make_sense_on_fabric_reach_it(tmp_path):
    from lightning.pytorch.plugins import MixedPrecision
    from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm

    environment = LightningEnvironment()
    trainer = _trainer(tmp_path, plugins=[MixedPrecision("bf16-mixed", "cpu"), environment, TorchCheckpointIO()])
    assert trainer.precision == "bf16-mixed"
    plugin = trainer.strategy.precision
    assert type(plugin) is FabricMixedPrecision and plugin.precision == "bf16-mixed"  # Fabric's equivalent
    assert trainer.fabric._connector.cluster_environment is environment  # one device: Fabric keeps it unused
    trainer.fit(TinyTask(), loader(n=16))
    assert trainer.global_step == 2
    # TorchSyncBatchNorm is sync_batchnorm=True (which needs CUDA: the same error as the flag).
    with pytest.raises(ConfigurationError, match="sync_batchnorm=True needs CUDA"):
        _trainer(tmp_path, plugins=TorchSyncBatchNorm())


def test_plugins_dltrain_cannot_use_are_refused_by_name(tmp_path):
    from lightning.pytorch.plugins import AsyncCheckpointIO, MixedPrecision
    from lightning.pytorch.plugins import Precision as TrainerPrecision
    from lightning.pytorch.plugins.layer_sync import LayerSync

    class MyCheckpointIO(TorchCheckpointIO):
        pass

    class MyPrecision(TrainerPrecision):
        pass

    class MyLayerSync(LayerSync):
        def apply(self, model):
            return model

        def revert(self, model):
            return model

    assert issubclass(MyCheckpointIO, CheckpointIO)
    cases = [
        (MyCheckpointIO(), "MyCheckpointIO.*would never be called"),
        (AsyncCheckpointIO(MyCheckpointIO()), "AsyncCheckpointIO.*MyCheckpointIO.*would never be called"),
        (MyPrecision(), "MyPrecision.*runs on Fabric"),
        (MyLayerSync(), "MyLayerSync.*custom LayerSync"),
        ("bf16-mixed", "precision name goes to Trainer\\(precision"),
        (object(), "Precision plugin, a CheckpointIO, a ClusterEnvironment or a LayerSync"),
        ([LightningEnvironment(), LightningEnvironment()], "more than one ClusterEnvironment"),
    ]
    for plugins, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            _trainer(tmp_path, plugins=plugins)
    with pytest.raises(ConfigurationError, match="choose one"):  # as Lightning: a precision twice
        _trainer(tmp_path, precision="bf16-mixed", plugins=[MixedPrecision("bf16-mixed", "cpu")])


# ---------------------------------------------------------------------------------------------------- autolog
def test_enable_autolog_hparams(tmp_path):
    from dltrain.loggers import CSVLogger

    for autolog in (True, False):
        logger = CSVLogger(tmp_path / str(autolog))
        trainer = _trainer(tmp_path, logger=logger, enable_autolog_hparams=autolog)
        assert trainer.enable_autolog_hparams is autolog
        trainer.fit(TinyTask(), loader(n=16))
        import os

        import yaml

        path = os.path.join(logger.log_dir, "hparams.yaml")
        params = yaml.safe_load(open(path)) if os.path.exists(path) else {}
        assert ("lr" in params) is autolog, params


# ---------------------------------------------------------------------------------------------------- weights_only
class Opaque:
    """A custom object in a checkpoint (Lightning writes hyperparameters as given): no weights_only load."""

    def __init__(self, value: int) -> None:
        self.value = value


def test_weights_only_false_loads_a_trusted_checkpoint_with_objects(tmp_path):
    trainer = _trainer(tmp_path, logger=False)
    task = TinyTask()
    trainer.fit(task, loader(n=16), loader(n=16))
    path = trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hparams"]["opaque"] = Opaque(3)  # what Lightning may have written (its hyper_parameters)
    torch.save(checkpoint, path)
    for run in (lambda **kw: trainer.validate(task, loader(n=16), ckpt_path=path, verbose=False, **kw),
                lambda **kw: trainer.test(task, loader(n=16), ckpt_path=path, verbose=False, **kw),
                lambda **kw: trainer.predict(task, torch.utils.data.DataLoader(torch.randn(16, 8), batch_size=8),
                                             ckpt_path=path, **kw)):
        for safe in (None, True):  # the default: tensors and plain types only
            with pytest.raises(CheckpointError, match="cannot be read"):
                run(weights_only=safe)
        assert run(weights_only=False)  # trusted: any object
    resumed = _trainer(tmp_path, max_epochs=2, logger=False)
    with pytest.raises(CheckpointError, match="cannot be read"):
        resumed.fit(TinyTask(), loader(n=16), ckpt_path=path)
    resumed.fit(TinyTask(), loader(n=16), ckpt_path=path, weights_only=False)
    assert resumed.global_step == 4
