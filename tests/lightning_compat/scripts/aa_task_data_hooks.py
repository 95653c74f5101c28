"""Data from the task's own hooks (prepare_data, setup, *_dataloader, teardown: no datamodule), the stage they get
(TrainerFn), self.log in on_train_start, numpy/int values, reduce_fx "max"/"sum"/torch.max, on_step+on_epoch in
validation, a dict returned from training_step in on_train_batch_end (issue 22: on_train_start could not log
without a sanity check; setup/teardown got "fit" where Lightning passes TrainerFn.FITTING). No sanity check here:
with one, Lightning asks for val_dataloader before train_dataloader, dltrain after."""
import json

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class M(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 2)
        self.calls = []
    def prepare_data(self):
        self.calls.append("prepare_data")
    def setup(self, stage):
        self.calls.append(f"setup:{stage}:{self.trainer.datamodule is None}")
        g = torch.Generator().manual_seed(0)
        x = torch.randn(48, 4, generator=g)
        self.ds = TensorDataset(x, (x.sum(1) > 0).long())
    def teardown(self, stage):
        self.calls.append(f"teardown:{stage}")
    def train_dataloader(self):
        self.calls.append("train_dataloader")
        return DataLoader(self.ds, batch_size=8)
    def val_dataloader(self):
        self.calls.append("val_dataloader")
        return DataLoader(self.ds, batch_size=16)
    def test_dataloader(self):
        return DataLoader(self.ds, batch_size=24)
    def on_train_start(self):
        self.log("start_marker", 1.0)
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        self.log("np_float", np.float64(batch_idx), on_epoch=True, on_step=False)
        self.log("int_val", batch_idx, on_epoch=True, on_step=False, reduce_fx="max")
        self.log("summed", 1.0, on_epoch=True, on_step=False, reduce_fx="sum")
        self.log("maxed", float(batch_idx), on_epoch=True, on_step=False, reduce_fx=torch.max)
        return {"loss": loss, "extra": batch_idx}
    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.calls.append(sorted(outputs.keys()) if batch_idx == 0 else None)
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("v_step", F.cross_entropy(self.net(x), y), on_step=True, on_epoch=True)
    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("t", F.cross_entropy(self.net(x), y))
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

seed_everything(0)
m = M()
tr = Trainer(accelerator="cpu", max_epochs=2, enable_progress_bar=False, logger=False, enable_checkpointing=False,
             num_sanity_val_steps=0)
tr.fit(m)
out = {"cm": {k: round(float(v), 5) for k, v in sorted(tr.callback_metrics.items())}}
out["val"] = tr.validate(m, verbose=False)
out["test"] = tr.test(m, verbose=False)
out["calls"] = [c for c in m.calls if c is not None]
out["dm"] = tr.datamodule is None
print(json.dumps(out))
