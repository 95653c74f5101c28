"""Trainer arguments: overfit_batches (int and float; a shuffled training loader is read in order, with the
warning), enable_autolog_hparams, plugins (Lightning's DoublePrecision plugin, a cluster environment, the default
CheckpointIO) and weights_only on fit/validate/test/predict."""
import json
import warnings

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins import DoublePrecision
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self, lr=0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(3, 1)
        self.seen = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(batch[0][:, 0].tolist())
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append(batch[0][:, 0].tolist())
        self.log("val_loss", F.mse_loss(self.net(batch[0]), batch[1]))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", F.mse_loss(self.net(batch[0]), batch[1]))

    def predict_step(self, batch, batch_idx):
        return self.net(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Recorder(Logger):
    """Counts what the Trainer sends (both libraries' Logger base accept this subclass)."""

    def __init__(self):
        super().__init__()
        self.hparams_calls = 0

    @property
    def name(self):
        return "rec"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        self.hparams_calls += 1

    def log_metrics(self, metrics, step=None):
        pass


seed_everything(0)
x = torch.randn(40, 3)
x[:, 0] = torch.arange(40.0)  # the sample's index, to see which ones each epoch reads
data = TensorDataset(x, x[:, 1:].sum(1, keepdim=True))
common = dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, num_sanity_val_steps=0)
out = {}
for overfit in (2, 0.25):
    seed_everything(0)
    model = Model()
    trainer = Trainer(max_epochs=2, overfit_batches=overfit, logger=False, **common)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, DataLoader(data, batch_size=4, shuffle=True), DataLoader(data, batch_size=4))
    out[f"overfit_{overfit}"] = {
        "seen": model.seen, "limits": [trainer.limit_train_batches, trainer.limit_val_batches],
        "warned": any("requested to overfit" in str(w.message) and "train dataloader shuffling" in str(w.message)
                      for w in caught),
        "loss": trainer.callback_metrics["loss"].item()}

for autolog in (True, False):
    recorder = Recorder()
    trainer = Trainer(max_epochs=1, limit_train_batches=2, logger=recorder, enable_autolog_hparams=autolog,
                      **common)
    trainer.fit(Model(), DataLoader(data, batch_size=4))
    out[f"autolog_{autolog}"] = recorder.hparams_calls > 0

seed_everything(0)
model = Model()
trainer = Trainer(max_epochs=1, limit_train_batches=3, logger=False, default_root_dir="runs",
                  plugins=[DoublePrecision(), LightningEnvironment(), TorchCheckpointIO()],
                  **{**common, "enable_checkpointing": True})
trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=8))
out["double_plugin"] = {"precision": trainer.precision, "loss": trainer.callback_metrics["loss"].item()}
path = trainer.checkpoint_callback.best_model_path
for weights_only in (None, True, False):
    out[f"weights_only_{weights_only}"] = [
        trainer.validate(model, DataLoader(data, batch_size=8), ckpt_path=path, weights_only=weights_only,
                         verbose=False)[0]["val_loss"],
        trainer.test(model, DataLoader(data, batch_size=8), ckpt_path=path, weights_only=weights_only,
                     verbose=False)[0]["test_loss"],
        len(trainer.predict(model, DataLoader(data, batch_size=8), ckpt_path=path, weights_only=weights_only))]
resumed = Trainer(max_epochs=2, limit_train_batches=3, logger=False, default_root_dir="runs",
                  **{**common, "enable_checkpointing": True})
resumed.fit(Model(), DataLoader(data, batch_size=4), ckpt_path=path, weights_only=True)
out["resumed_step"] = resumed.global_step
print(json.dumps(out))
