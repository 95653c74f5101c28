"""EMAWeightAveraging: validation on the averaged weights, training ends with them, the checkpoint loads them."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(96, 4, generator=g)
data = TensorDataset(x, x[:, :2].sum(1, keepdim=True))
model = Model()
checkpoints = ModelCheckpoint(dirpath="ckpt", filename="ema", save_last=False)
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, default_root_dir="out",
                  callbacks=[EMAWeightAveraging(decay=0.9, update_starting_at_step=3), checkpoints])
trainer.fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=32))
fit_val = float(trainer.callback_metrics["val_loss"])
train_loss = float(trainer.callback_metrics["train_loss"])
(validated,) = trainer.validate(model, DataLoader(data, batch_size=32), verbose=False)
loaded = Model.load_from_checkpoint(checkpoints.best_model_path)
print(json.dumps({"fit_val": fit_val, "validate_val": validated["val_loss"],
                  "weights": float(sum(p.sum() for p in model.parameters())),
                  "loaded_weights": float(sum(p.sum() for p in loaded.parameters())),
                  "train_loss": train_loss}))
