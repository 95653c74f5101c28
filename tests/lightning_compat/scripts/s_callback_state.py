"""A stateful callback used twice (state_key from Lightning's _generate_state_key), outputs as on_train_batch_end
gets them, on_validation_batch_end with two validation loaders and the default progress bar on, and the callbacks'
states restored from a checkpoint by key (issue 22: _generate_state_key was missing)."""
import json
import os

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Counter(Callback):
    def __init__(self, what):
        self.what, self.count, self.val_batches, self.outputs = what, 0, [], []

    @property
    def state_key(self):
        return self._generate_state_key(what=self.what)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.count += 1
        if batch_idx == 0:
            self.outputs.append(sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val_batches.append([batch_idx, dataloader_idx, None if outputs is None else float(outputs)])

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        return {"loss": loss, "extra": loss.detach() * 2}

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(32, 4, generator=g)
data = TensorDataset(x, x.sum(1, keepdim=True))
a, b = Counter("a"), Counter("b")
trainer = Trainer(accelerator="cpu", max_epochs=2, logger=False, callbacks=[a, b, ModelCheckpoint(dirpath="ck")],
                  enable_progress_bar=True, enable_model_summary=False, num_sanity_val_steps=0)
trainer.fit(Model(), DataLoader(data, batch_size=8), [DataLoader(data, batch_size=16), DataLoader(data, batch_size=32)])
ck = torch.load(os.path.join("ck", sorted(os.listdir("ck"))[0]), weights_only=False)
a2, b2 = Counter("a"), Counter("b")
t2 = Trainer(accelerator="cpu", max_epochs=3, logger=False, callbacks=[a2, b2], enable_progress_bar=True,
             enable_model_summary=False, num_sanity_val_steps=0, enable_checkpointing=False)
t2.fit(Model(), DataLoader(data, batch_size=8), ckpt_path=os.path.join("ck", sorted(os.listdir("ck"))[-1]))
print(json.dumps({"a": [a.count, a.outputs, a.val_batches], "b": b.count, "keys": sorted(k for k in ck["callbacks"] if "Counter" in k),
                  "a2": a2.count, "b2": b2.count, "metrics": sorted(trainer.callback_metrics)}))
