"""RichProgressBar and RichModelSummary with a training run; the advanced profiler's report file."""
import json
import os

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar
from lightning.pytorch.profilers import AdvancedProfiler
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        self.example_input_array = torch.zeros(2, 4)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self(batch[0]), batch[1])
        self.log("loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.mse_loss(self(batch[0]), batch[1]), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(64, 4, generator=g)
data = TensorDataset(x, x.sum(1, keepdim=True))
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                  default_root_dir="out", profiler=AdvancedProfiler(dirpath="prof", filename="adv"),
                  callbacks=[RichProgressBar(leave=True), RichModelSummary(max_depth=2)])
trainer.fit(Model(), DataLoader(data, batch_size=8), DataLoader(data, batch_size=16))
print(json.dumps({"loss": float(trainer.callback_metrics["loss"]), "val_loss": float(trainer.callback_metrics["val_loss"]),
                  "report": os.path.isfile("prof/fit-adv.txt"),
                  "bar": type(trainer.progress_bar_callback).__name__}))
