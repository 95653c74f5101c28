"""BatchSizeFinder (power) and Tuner.scale_batch_size (binsearch) stop where training runs out of memory."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import BatchSizeFinder
from lightning.pytorch.tuner import Tuner
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self, batch_size=4):
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.net = torch.nn.Linear(4, 1)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(200, 4, generator=g)
        self.data = TensorDataset(x, x.sum(1, keepdim=True))

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def training_step(self, batch, batch_idx):
        if len(batch[0]) > 24:  # what a device with room for 24 samples would do
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


seed_everything(0)
finder = BatchSizeFinder(mode="power", init_val=2)
model = Model()
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                  callbacks=[finder], default_root_dir="out")
trainer.fit(model)
power = {"power": finder.optimal_batch_size, "power_model": model.batch_size, "power_steps": trainer.global_step,
         "power_loss": float(trainer.callback_metrics["loss"])}
seed_everything(1)  # dltrain's search gives the random number generators back as they were; Lightning's does not
model2 = Model()
trainer2 = Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                   default_root_dir="out2")
size = Tuner(trainer2).scale_batch_size(model2, mode="binsearch", init_val=2)
trainer2.fit(model2)
print(json.dumps({**power, "binsearch": size, "binsearch_model": model2.batch_size, "steps": trainer2.global_step,
                  "loss": float(trainer2.callback_metrics["loss"])}))
