"""Warnings where Lightning warns, not errors: a val loader with no validation_step (a GAN template passes one),
and a validation_step with no val loader; the fit goes on without validation."""
import json
import warnings

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class NoValidation(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)
        self.validated = False

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("loss", loss)
        return loss

    def on_validation_start(self):
        self.validated = True

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class OnlyValidationStep(NoValidation):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.mse_loss(self.net(batch[0]), batch[1]))


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(32, 4, generator=g)
loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
out = {}
for name, model, val in (("no_step", NoValidation(), loader), ("no_loader", OnlyValidationStep(), None)):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, loader, val)
    said = [w for w in caught if "Skipping val loop" in str(w.message)]
    out[name] = {"warned": len(said) == 1, "category": said[0].category.__name__ if said else None,
                 "validated": model.validated, "loss": round(float(trainer.callback_metrics["loss"]), 6)}
print(json.dumps(out))
