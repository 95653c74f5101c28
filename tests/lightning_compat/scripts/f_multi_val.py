"""Several validation loaders: validation_step(batch, batch_idx, dataloader_idx), metrics per loader."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


def make(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g) + shift
    return TensorDataset(x, x.sum(1, keepdim=True))


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self.net(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("val_loss", F.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


seed_everything(0)
model = Model()
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False)
vals = [DataLoader(make(32, 1), batch_size=8), DataLoader(make(24, 2, shift=1.0), batch_size=8)]
trainer.fit(model, DataLoader(make(64, 0), batch_size=8), vals)
results = trainer.validate(model, vals)
print(json.dumps({"n_results": len(results), **{k: v for r in results for k, v in r.items()}}))
