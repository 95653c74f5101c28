"""fast_dev_run, limit_train/val/test_batches (the sanity check within limit_val_batches) and max_time."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 1)
        self.batches = {"train": 0, "val": 0, "test": 0}

    def training_step(self, batch, batch_idx):
        self.batches["train"] += 1
        return F.mse_loss(self.net(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.batches["val"] += 1

    def test_step(self, batch, batch_idx):
        self.batches["test"] += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


seed_everything(0)
x = torch.randn(80, 3)
loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
common = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
out = {}
fast = Model()
Trainer(fast_dev_run=True, **common).fit(fast, loader, loader)
out["fast_dev_run"] = fast.batches
limited = Model()
t = Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0.5, limit_test_batches=2,
            num_sanity_val_steps=0, enable_checkpointing=False, **common)
t.fit(limited, loader, loader)
t.test(limited, loader)
out["limited"] = limited.batches
for name, limit_val, sanity in (("sanity_capped", 1, 2), ("sanity_all", 3, -1), ("sanity_fraction", 0.125, 4)):
    capped = Model()  # Lightning's sanity check runs min(num_sanity_val_steps, the limited validation batches)
    Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=limit_val, num_sanity_val_steps=sanity,
            enable_checkpointing=False, **common).fit(capped, loader, loader)
    out[name] = capped.batches
timed = Model()
t = Trainer(max_time={"seconds": 0}, max_epochs=5, enable_checkpointing=False, **common)
t.fit(timed, loader)
out["max_time_steps_le_1"] = t.global_step <= 1
print(json.dumps(out))
