"""SpikeDetection stops at a loss spike and writes the batches to skip; OnExceptionCheckpoint saves then."""
import json
import os

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import OnExceptionCheckpoint, SpikeDetection
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        return loss * 100 if batch_idx == 9 else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(160, 4, generator=g)
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, default_root_dir="out",
                  callbacks=[SpikeDetection(window=5, warmup=3, exclude_batches_path="spikes"),
                             OnExceptionCheckpoint(dirpath="exc")])
error = None
try:
    trainer.fit(Model(), DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
except Exception as err:  # Lightning's and dltrain's exception classes differ: compare the message
    error = str(err).splitlines()[0]
with open("spikes/skip_batches.json") as f:
    skipped = json.load(f)
print(json.dumps({"error": error, "skipped": skipped, "steps": trainer.global_step,
                  "exception_checkpoint": os.path.isfile("exc/on_exception.ckpt")}))
