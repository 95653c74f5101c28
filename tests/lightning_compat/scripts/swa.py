"""StochasticWeightAveraging: the SWA schedule from the start epoch and the averaged weights at the end."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, StochasticWeightAveraging
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)]


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(64, 4, generator=g)
model = Model()
lrs = []


class Lrs(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


trainer = Trainer(accelerator="cpu", devices=1, max_epochs=5, logger=False, enable_checkpointing=False,
                  default_root_dir="out",
                  callbacks=[StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=3, annealing_epochs=2), Lrs()])
trainer.fit(model, DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
print(json.dumps({"weights": float(sum(p.sum() for p in model.parameters())), "lrs": lrs,
                  "train_loss": float(trainer.callback_metrics["train_loss_epoch"])}))
