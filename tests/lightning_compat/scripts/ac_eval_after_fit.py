"""Evaluation after fit: test() with no model (Lightning loads the best checkpoint and warns), validate(ckpt_path=
"last"), test with the model given (its own weights), and trainer.ckpt_path after each (issue 22: dltrain tested the
weights of the fit's end when no model was given)."""
import json
import os
import warnings

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class DM(LightningDataModule):
    def setup(self, stage):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        self.ds = TensorDataset(x, (x.sum(1) > 0).long())
    def train_dataloader(self):
        return DataLoader(self.ds, batch_size=8)
    def val_dataloader(self):
        return DataLoader(self.ds, batch_size=32)
    def test_dataloader(self):
        return DataLoader(self.ds, batch_size=32)

class M(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 2)
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))
    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.cross_entropy(self.net(x), y))
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)

seed_everything(0)
m, dm = M(), DM()
ck = ModelCheckpoint(monitor="val_loss", save_top_k=1, save_last=True)
tr = Trainer(accelerator="cpu", max_epochs=4, callbacks=[ck], enable_progress_bar=False, logger=False)
tr.fit(m, datamodule=dm)
out = {"best": os.path.basename(ck.best_model_path)}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out["test_nomodel"] = tr.test(datamodule=dm, verbose=False)
    out["test_ckpt_path"] = os.path.basename(tr.ckpt_path) if tr.ckpt_path else None
    out["val_last"] = tr.validate(datamodule=dm, ckpt_path="last", verbose=False)
    out["val_ckpt_path"] = os.path.basename(tr.ckpt_path) if tr.ckpt_path else None
    out["test_model"] = tr.test(m, datamodule=dm, verbose=False)
    out["test_model_ckpt_path"] = tr.ckpt_path
out["warned"] = sorted({type(w.message).__name__ for w in caught if "best" in str(w.message).lower() or "ckpt_path" in str(w.message)})
print(json.dumps(out))
