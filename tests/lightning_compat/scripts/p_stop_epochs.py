"""current_epoch and global_step when training stops: max_epochs, should_stop at an epoch end or mid-epoch,
max_steps at an epoch end or mid-epoch, EarlyStopping; as seen in on_train_end and after fit, validate and test."""
import json

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self.net(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", 1.0)  # constant: EarlyStopping(patience=1) stops after two epochs

    def test_step(self, batch, batch_idx):
        self.log("test_loss", F.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Stop(Callback):
    """Sets should_stop in epoch ``epoch``: at its end, or after batch ``batch`` of it."""

    def __init__(self, epoch, batch=None):
        self.epoch, self.batch, self.seen = epoch, batch, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.batch is not None and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module):
        if self.batch is None and trainer.current_epoch == self.epoch:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module):
        self.seen["on_train_end"] = trainer.current_epoch


seed_everything(0)
x = torch.randn(32, 3)
loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)  # 4 batches per epoch
common = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, num_sanity_val_steps=0)
cases = {
    "max_epochs": (dict(max_epochs=3), Stop(epoch=-1)),
    "stop_at_epoch_end": (dict(max_epochs=5), Stop(epoch=1)),
    "stop_mid_epoch": (dict(max_epochs=5), Stop(epoch=1, batch=1)),
    "max_steps_at_epoch_end": (dict(max_steps=8), Stop(epoch=-1)),
    "max_steps_mid_epoch": (dict(max_steps=6), Stop(epoch=-1)),
    "early_stopping": (dict(max_epochs=5), Stop(epoch=-1)),
}
out = {}
for name, (kwargs, stop) in cases.items():
    callbacks = [stop]
    if name == "early_stopping":
        callbacks.append(EarlyStopping("val_loss", patience=1))
    model = Model()
    trainer = Trainer(callbacks=callbacks, **common, **kwargs)
    trainer.fit(model, loader, loader)
    out[name] = {"on_train_end": stop.seen["on_train_end"], "after_fit": trainer.current_epoch,
                 "global_step": trainer.global_step, "task_epoch": model.current_epoch}
    trainer.validate(model, loader, verbose=False)
    out[name]["after_validate"] = trainer.current_epoch
    trainer.test(model, loader, verbose=False)
    out[name]["after_test"] = trainer.current_epoch
print(json.dumps(out))
