"""Loaders and loggers: a dict of training loaders, two validation/test/predict loaders, per-loader test results
with add_dataloader_idx=False names, return_predictions=False, Lightning's own CombinedLoader (from
lightning.pytorch.utilities, not renamed), TensorBoard + CSV loggers with logger.experiment, batch_size= and float
values, freeze/unfreeze, to_torchscript (issue 22: Lightning's CombinedLoader failed in fit
every loader's test
results held every unsuffixed value)."""
import json
import os

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import CombinedLoader
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

g = torch.Generator().manual_seed(0)
X = torch.randn(64, 4, generator=g)
Y = (X.sum(1) > 0).long()
la = DataLoader(TensorDataset(X, Y), batch_size=8)
lb = DataLoader(TensorDataset(X[:24], Y[:24]), batch_size=8)

class M(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 2)
        self.example_input_array = torch.zeros(2, 4)
        self.kinds = []
    def forward(self, x):
        return self.net(x)
    def training_step(self, batch, batch_idx):
        self.kinds.append(sorted(batch) if isinstance(batch, dict) else type(batch).__name__)
        (xa, ya), (xb, yb) = batch["a"], batch["b"]
        loss = F.cross_entropy(self(xa), ya) + F.cross_entropy(self(xb), yb)
        self.log("loss", loss, batch_size=xa.shape[0])
        self.log("plain_float", 1.5)
        if batch_idx == 0:
            self.logger.experiment.add_scalar("custom", 3.0, self.global_step)
        return loss
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("v", F.cross_entropy(self(x), y))
    def test_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log(f"t{dataloader_idx}", F.cross_entropy(self(x), y), add_dataloader_idx=False)
    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0]).argmax(1)
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)

seed_everything(3)
m = M()
tb = TensorBoardLogger("tb", name="exp", version="v1", default_hp_metric=False)
tr = Trainer(accelerator="cpu", max_epochs=2, logger=[tb, CSVLogger("csv")], enable_progress_bar=False,
             log_every_n_steps=3, enable_checkpointing=False)
tr.fit(m, train_dataloaders={"a": la, "b": lb}, val_dataloaders=[la, lb])
out = {"kinds": m.kinds[:2], "n": len(m.kinds), "step": tr.global_step,
       "cm": {k: round(float(v), 5) for k, v in sorted(tr.callback_metrics.items())},
       "log_dir": os.path.relpath(tr.log_dir), "tb_written": any(f.startswith("events.out.tfevents") for f in os.listdir("tb/exp/v1")),
       "ntb": tr.num_training_batches, "nvb": tr.num_val_batches}
out["test"] = tr.test(m, dataloaders=[la, lb], verbose=False)
p = tr.predict(m, dataloaders=[la, lb])
out["pred"] = [[t.tolist() for t in lst] for lst in p]
out["pred_none"] = tr.predict(m, dataloaders=lb, return_predictions=False)
cl = CombinedLoader({"a": la, "b": lb}, mode="min_size")
tr2 = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
class M2(M):
    def training_step(self, batch, batch_idx):
        (xa, ya), (xb, yb) = batch["a"], batch["b"]
        return F.cross_entropy(self(xa), ya) + F.cross_entropy(self(xb), yb)
m2 = M2()
tr2.fit(m2, cl)
out["cl"] = [tr2.global_step, tr2.num_training_batches]
out["ts"] = type(m2.to_torchscript(method="trace")).__name__
m2.freeze()
out["frozen"] = [p.requires_grad for p in m2.parameters()] + [m2.training]
m2.unfreeze()
out["unfrozen"] = [p.requires_grad for p in m2.parameters()] + [m2.training]
print(json.dumps(out))
