"""Lightning's examples/pytorch/basics/autoencoder.py, on generated images: LightningCLI with trainer_defaults
holding one callback instance (not a list), a callback that writes images through trainer.logger.experiment
(TensorBoard) from on_train_epoch_end, then test/predict with ckpt_path="best" and no model argument."""
import json
import os

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule, callbacks
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split


class ImageSampler(callbacks.Callback):
    def __init__(self, num_samples: int = 3):
        super().__init__()
        self.num_samples = num_samples
        self.written = 0

    def on_train_epoch_end(self, trainer, pl_module):
        if not isinstance(trainer.logger, TensorBoardLogger):
            return
        with torch.no_grad():
            pl_module.eval()
            images = pl_module(torch.rand(self.num_samples, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
            pl_module.train()
        trainer.logger.experiment.add_image("generated_images", images[0], global_step=trainer.global_step)
        self.written += 1


class LitAutoEncoder(LightningModule):
    def __init__(self, hidden_dim: int = 16):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Linear(64, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 3))
        self.decoder = nn.Sequential(nn.Linear(3, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 64))

    def forward(self, x):
        z = self.encoder(x.view(x.size(0), -1))
        return self.decoder(z).view(x.size(0), 1, 8, 8)

    def training_step(self, batch, batch_idx):
        return self._common_step(batch, batch_idx, "train")

    def validation_step(self, batch, batch_idx):
        self._common_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        self._common_step(batch, batch_idx, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=None):
        x = self._prepare_batch(batch)
        return self(x)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)

    def _prepare_batch(self, batch):
        x, _ = batch
        return x

    def _common_step(self, batch, batch_idx, stage: str):
        x = self._prepare_batch(batch)
        loss = F.mse_loss(x, self(x))
        self.log(f"{stage}_loss", loss, on_step=True)
        return loss


class MyDataModule(LightningDataModule):
    def __init__(self, batch_size: int = 32):
        super().__init__()
        g = torch.Generator().manual_seed(42)
        dataset = TensorDataset(torch.rand(320, 1, 8, 8, generator=g), torch.zeros(320))
        self.mnist_test = TensorDataset(torch.rand(64, 1, 8, 8, generator=g), torch.zeros(64))
        self.mnist_train, self.mnist_val = random_split(dataset, [256, 64], generator=torch.Generator().manual_seed(42))
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.mnist_train, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.mnist_val, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.mnist_test, batch_size=self.batch_size)

    def predict_dataloader(self):
        return DataLoader(self.mnist_test, batch_size=self.batch_size)


sampler = ImageSampler()
cli = LightningCLI(
    LitAutoEncoder, MyDataModule, seed_everything_default=1234, run=False,
    trainer_defaults={"callbacks": sampler, "max_epochs": 2, "accelerator": "cpu", "enable_progress_bar": False},
    args=["--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger", "--trainer.logger.save_dir", "tb"],
)
cli.trainer.fit(cli.model, datamodule=cli.datamodule)
test = cli.trainer.test(ckpt_path="best", datamodule=cli.datamodule, verbose=False)
predictions = cli.trainer.predict(ckpt_path="best", datamodule=cli.datamodule)
print(json.dumps({"test": test, "n_pred": len(predictions), "shape": list(predictions[0].shape),
                  "first": round(float(predictions[0][0, 0, 0, 0]), 5), "written": sampler.written,
                  "logger": type(cli.trainer.logger).__name__, "best": os.path.basename(cli.trainer.checkpoint_callback.best_model_path),
                  "step": cli.trainer.global_step}))
