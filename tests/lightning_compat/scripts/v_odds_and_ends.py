"""Everyday odds and ends: configure_model and configure_callbacks, on_train_batch_start returning -1, grad_norm and
rank_zero_only from lightning.pytorch.utilities (not renamed), min_epochs against EarlyStopping, reload_dataloaders_every_n_epochs,
bf16-mixed on the CPU, weights-only checkpoints and the epoch/global_step counters users read from a checkpoint,
trainer.save_checkpoint then fit(ckpt_path=...) (issue 22: the counters were missing
EarlyStopping with
check_on_train_epoch_end=False raised in a fit without validation). Not compared: what the resumed fit trains, as
dltrain keeps a run that stopped early stopped (docs/guides/from-lightning.md)."""
import json
import os

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import grad_norm, rank_zero_only
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

g = torch.Generator().manual_seed(0)
X = torch.randn(64, 4, generator=g)
Y = (X.sum(1) > 0).long()

class DM(LightningDataModule):
    def __init__(self):
        super().__init__()
        self.calls = 0
    def train_dataloader(self):
        self.calls += 1
        return DataLoader(TensorDataset(X, Y), batch_size=8)
    def val_dataloader(self):
        return DataLoader(TensorDataset(X[:16], Y[:16]), batch_size=8)

class M(LightningModule):
    def __init__(self, stop_at=None):
        super().__init__()
        self.net = None
        self.stop_at = stop_at
        self.notes = []
    def configure_model(self):
        if self.net is None:
            self.net = torch.nn.Linear(4, 2)
    def configure_callbacks(self):
        return [EarlyStopping(monitor="val_loss", patience=0, min_delta=10.0, check_on_train_epoch_end=False)]
    def on_train_batch_start(self, batch, batch_idx):
        if self.stop_at is not None and batch_idx == self.stop_at:
            return -1
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss
    def on_before_optimizer_step(self, optimizer):
        norms = grad_norm(self.net, norm_type=2)
        self.log_dict(norms)
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))
    @rank_zero_only
    def note(self, s):
        self.notes.append(s)
    def on_train_epoch_end(self):
        self.note(f"e{self.current_epoch}:{self.global_step}:{self.trainer.is_global_zero}")
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)}

seed_everything(5)
dm = DM()
m = M()
ck = ModelCheckpoint(dirpath="ck", save_weights_only=True, save_last=True, filename="w-{epoch}")
tr = Trainer(accelerator="cpu", max_epochs=5, min_epochs=3, reload_dataloaders_every_n_epochs=1, callbacks=[ck],
             enable_progress_bar=False, logger=False, precision="bf16-mixed", inference_mode=False, deterministic=True)
tr.fit(m, datamodule=dm)
out = {"epoch": tr.current_epoch, "step": tr.global_step, "calls": dm.calls, "notes": m.notes,
       "cm": sorted(tr.callback_metrics), "files": sorted(os.listdir("ck")),
       "last_counters": [torch.load("ck/last.ckpt", weights_only=False)[k] for k in ("epoch", "global_step")],
       "best_counters": [torch.load(ck.best_model_path, weights_only=False)[k] for k in ("epoch", "global_step")],
       "lr": tr.optimizers[0].param_groups[0]["lr"], "stopped": tr.should_stop,
       "es": [type(c).__name__ for c in tr.callbacks if type(c).__name__ == "EarlyStopping"]}
tr.save_checkpoint("manual.ckpt")
out["manual_counters"] = [torch.load("manual.ckpt", weights_only=False)[k] for k in ("epoch", "global_step")]
m2 = M(stop_at=3)
tr2 = Trainer(accelerator="cpu", max_steps=9, enable_progress_bar=False, logger=False, enable_checkpointing=False)
tr2.fit(m2, DataLoader(TensorDataset(X, Y), batch_size=8))
out["skip"] = [tr2.global_step, tr2.current_epoch]
m3 = M()
tr3 = Trainer(accelerator="cpu", max_epochs=7, enable_progress_bar=False, logger=False, enable_checkpointing=False)
tr3.fit(m3, datamodule=DM(), ckpt_path="manual.ckpt")
out["resumed"] = [tr3.ckpt_path is not None and os.path.basename(tr3.ckpt_path)]
print(json.dumps(out))
