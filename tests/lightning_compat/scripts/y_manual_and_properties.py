"""Manual optimization with two optimizers and schedulers (toggle_optimizer, clip_gradients, stepping one of them
every other batch, an epoch-end scheduler step), EarlyStopping's thresholds, trainer.init_module(), the Trainer's and
the task's rank/device properties, and task.trainer before any fit (issue 22: the wrapped optimizers were not
instances of their class
a detached task.trainer was not a RuntimeError)."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

g = torch.Generator().manual_seed(0)
X = torch.randn(64, 4, generator=g)
Y = (X.sum(1) > 0).long()
loader = DataLoader(TensorDataset(X, Y), batch_size=8)

class Manual(LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.a = torch.nn.Linear(4, 2)
        self.b = torch.nn.Linear(4, 2)
        self.info = {}
    def training_step(self, batch, batch_idx):
        opt_a, opt_b = self.optimizers()
        sch_a, sch_b = self.lr_schedulers()
        x, y = batch
        self.toggle_optimizer(opt_a)
        loss_a = F.cross_entropy(self.a(x), y)
        self.manual_backward(loss_a)
        self.clip_gradients(opt_a, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
        opt_a.step()
        opt_a.zero_grad()
        self.untoggle_optimizer(opt_a)
        if (batch_idx + 1) % 2 == 0:
            loss_b = F.cross_entropy(self.b(x), y)
            self.manual_backward(loss_b)
            opt_b.step()
            opt_b.zero_grad()
            sch_b.step()
        self.log_dict({"la": loss_a}, prog_bar=True)
        self.info["types"] = [isinstance(opt_a, torch.optim.SGD), isinstance(opt_b, torch.optim.Adam), type(sch_a).__name__, opt_a.param_groups is opt_a.optimizer.param_groups, sorted(opt_a.state_dict())]
        self.info["grad_flags"] = [p.requires_grad for p in self.parameters()]
    def on_train_epoch_end(self):
        self.lr_schedulers()[0].step()
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.a(x), y))
    def configure_optimizers(self):
        oa = torch.optim.SGD(self.a.parameters(), lr=0.1)
        ob = torch.optim.Adam(self.b.parameters(), lr=0.01)
        return [oa, ob], [torch.optim.lr_scheduler.StepLR(oa, 1, 0.5), torch.optim.lr_scheduler.StepLR(ob, 2, 0.5)]

seed_everything(2)
es = EarlyStopping(monitor="val_loss", stopping_threshold=0.3, divergence_threshold=5.0, check_finite=True, mode="min")
tr = Trainer(accelerator="cpu", max_epochs=6, callbacks=[es], enable_progress_bar=False, logger=False,
             enable_checkpointing=False)
with tr.init_module():
    m = Manual()
tr.fit(m, loader, loader)
out = {"step": tr.global_step, "epoch": tr.current_epoch, "info": m.info,
       "lrs": [o.param_groups[0]["lr"] for o in tr.optimizers], "es": [es.stopped_epoch, es.wait_count],
       "reason": es.stopping_reason_message is not None,
       "props": [tr.world_size, tr.node_rank, tr.local_rank, tr.global_rank, tr.num_devices, tr.num_nodes,
                 tr.is_global_zero, str(m.device), str(m.dtype), m.global_rank, m.local_rank],
       "cm": sorted(tr.callback_metrics), "max_steps": tr.max_steps, "min_epochs": tr.min_epochs,
       "estimated": tr.estimated_stepping_batches}
m2 = Manual()
try:
    m2.trainer  # noqa: B018
    out["detached"] = "no error"
except Exception as e:
    out["detached"] = isinstance(e, RuntimeError)
print(json.dumps(out))
