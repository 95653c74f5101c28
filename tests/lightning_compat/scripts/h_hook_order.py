"""A callback implementing every hook of a fit, a validate and a test, recording their order."""
import json

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

HOOKS = [
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start",
    "on_train_batch_end", "on_validation_start", "on_validation_end", "on_validation_epoch_start",
    "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end", "on_test_start",
    "on_test_end", "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start", "on_test_batch_end",
    "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
    "on_save_checkpoint", "on_exception",
]
calls = []


def recorder(name):
    def hook(self, trainer, pl_module, *args, **kwargs):
        calls.append(name)
    return hook


Recorder = type("Recorder", (Callback,), {name: recorder(name) for name in HOOKS})


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self.net(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.mse_loss(self.net(batch[0]), batch[1]))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", F.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


seed_everything(0)
x = torch.randn(8, 2)
loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False, callbacks=[Recorder()],
                  num_sanity_val_steps=1, limit_val_batches=1)
model = Model()
trainer.fit(model, loader, loader)
trainer.test(model, loader)
print(json.dumps({"calls": calls}))
