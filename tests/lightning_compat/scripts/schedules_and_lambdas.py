"""GradientAccumulationScheduler and LambdaCallback: steps per epoch change, every hook given is called."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import GradientAccumulationScheduler, LambdaCallback
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(64, 4, generator=g)
data = TensorDataset(x, x.sum(1, keepdim=True))
calls = []
lambdas = LambdaCallback(
    on_train_epoch_end=lambda trainer, module: calls.append(["epoch_end", trainer.current_epoch, trainer.global_step]),
    on_validation_end=lambda trainer, module: calls.append(["val_end", trainer.current_epoch]),
    on_fit_end=lambda trainer, module: calls.append(["fit_end", trainer.global_step]),
)
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_checkpointing=False,
                  num_sanity_val_steps=0, default_root_dir="out",
                  callbacks=[GradientAccumulationScheduler({1: 2, 2: 4}), lambdas])
trainer.fit(Model(), DataLoader(data, batch_size=8), DataLoader(data, batch_size=32))
print(json.dumps({"calls": calls, "steps": trainer.global_step, "loss": float(trainer.callback_metrics["loss"]),
                  "val_loss": float(trainer.callback_metrics["val_loss"])}))
