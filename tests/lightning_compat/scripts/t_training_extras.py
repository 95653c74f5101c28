"""Training extras: estimated_stepping_batches with OneCycleLR, accumulation with val_check_interval=0.5 and a
sanity check, on_step+on_epoch names, log_dict, all_gather on one process, the trainer's stage flags, the epoch-end
mean of kept outputs, LearningRateMonitor/ModelSummary/Timer(stage)/ModelCheckpoint(every_n_train_steps) files,
validate() results, fast_dev_run and overfit_batches (issue 22: Timer.time_elapsed("train") was a TypeError)."""
import json
import os

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary, Timer
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

g = torch.Generator().manual_seed(0)
X = torch.randn(96, 4, generator=g)
Y = (X.sum(1) > 0).long()
train = DataLoader(TensorDataset(X, Y), batch_size=8)
val = DataLoader(TensorDataset(X[:40], Y[:40]), batch_size=8)

class M(LightningModule):
    def __init__(self):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(4, 2)
        self.outs = []
        self.seen = {}
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("a", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log_dict({"m1": loss * 2, "m2": loss * 3}, on_step=False, on_epoch=True, sync_dist=True)
        self.outs.append(loss.detach())
        g = self.all_gather(loss.detach())
        self.seen["gather_shape"] = list(g.shape)
        self.seen["flags"] = [self.trainer.training, self.trainer.sanity_checking, self.trainer.validating]
        return loss
    def on_train_epoch_end(self):
        self.log("epoch_mean", torch.stack(self.outs).mean())
        self.outs.clear()
    def validation_step(self, batch, batch_idx):
        x, y = batch
        if self.trainer.sanity_checking:
            self.seen["sanity"] = self.seen.get("sanity", 0) + 1
        self.log("val_loss", F.cross_entropy(self.net(x), y))
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        self.seen["est"] = self.trainer.estimated_stepping_batches
        sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=self.trainer.estimated_stepping_batches)
        return [opt], [{"scheduler": sch, "interval": "step"}]

seed_everything(1)
m = M()
lrm = LearningRateMonitor(logging_interval="step")
timer = Timer(duration="00:00:05:00")
ck = ModelCheckpoint(dirpath="ck", save_last=True, every_n_train_steps=5)
tr = Trainer(accelerator="cpu", max_epochs=3, accumulate_grad_batches=2, val_check_interval=0.5,
             num_sanity_val_steps=2, limit_val_batches=0.5, log_every_n_steps=2,
             callbacks=[lrm, ModelSummary(max_depth=2), timer, ck], enable_progress_bar=True)
tr.fit(m, train, val)
out = {"seen": m.seen, "step": tr.global_step, "epoch": tr.current_epoch,
       "cm": {k: round(float(v), 5) for k, v in sorted(tr.callback_metrics.items())},
       "lr": tr.optimizers[0].param_groups[0]["lr"], "timer": [timer.time_elapsed("train") > 0, timer.time_elapsed("validate") > 0, timer.start_time("test") is None],
       "files": sorted(os.listdir("ck")), "ntb": tr.num_training_batches, "nvb": tr.num_val_batches,
       "max_epochs": tr.max_epochs, "val": tr.validate(m, val, verbose=False)}
tr2 = Trainer(accelerator="cpu", fast_dev_run=2, enable_progress_bar=False, logger=False)
m2 = M()
tr2.fit(m2, train, val)
out["fdr"] = [tr2.global_step, tr2.current_epoch, sorted(tr2.callback_metrics)]
tr3 = Trainer(accelerator="cpu", overfit_batches=2, max_epochs=2, enable_progress_bar=False, logger=False, enable_checkpointing=False)
m3 = M()
tr3.fit(m3, train, val)
out["ofb"] = [tr3.global_step, tr3.num_training_batches, tr3.num_val_batches]
print(json.dumps(out))
