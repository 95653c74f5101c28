"""Tuner.lr_find: the range test's curve, its suggestion set on the model, then training with it."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.tuner import Tuner
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self, lr=0.001):
        super().__init__()
        self.lr = lr
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(256, 4, generator=g)
data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True) ** 2 / 4), batch_size=8)
model = Model()
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                  default_root_dir="out")
finder = Tuner(trainer).lr_find(model, data, min_lr=1e-4, max_lr=3.0, num_training=30)
trainer.fit(model, data)
print(json.dumps({"suggestion": finder.suggestion(), "model_lr": model.lr, "points": len(finder.results["lr"]),
                  "last_loss_point": finder.results["loss"][-1], "lr_5": finder.results["lr"][5],
                  "loss": float(trainer.callback_metrics["loss"]), "steps": trainer.global_step}))
