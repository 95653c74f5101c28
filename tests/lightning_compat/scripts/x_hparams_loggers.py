"""Hyperparameters and loggers: save_hyperparameters(ignore=...) with a module argument, hparams_initial, the
TensorBoard and CSV loggers' names, versions and folders, the hparams.yaml they write, load_from_checkpoint with the
ignored module passed, overrides and map_location, and from the CSV logger's hparams.yaml (issue 22: that file held
dltrain's trainer/... keys, so the reload failed). Not compared: the default logger's class (dltrain's is CSVLogger)
and last.ckpt (kept by default), both in docs/guides/from-lightning.md."""
import json
import os

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

g = torch.Generator().manual_seed(0)
X = torch.randn(32, 4, generator=g)
Y = (X.sum(1) > 0).long()
loader = DataLoader(TensorDataset(X, Y), batch_size=8)

class M(LightningModule):
    def __init__(self, backbone: torch.nn.Module, lr: float = 0.1, tags="a,b", cfg=None):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.head = torch.nn.Linear(4, 2)
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.head(self.backbone(x)), y)
        self.log("loss", loss)
        return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

seed_everything(0)
m = M(torch.nn.Linear(4, 4), lr=0.05, cfg={"depth": 3, "names": ["x", "y"]})
tb = TensorBoardLogger(save_dir="logs", name="tbexp")
csv = CSVLogger(save_dir="logs", name="csvexp", flush_logs_every_n_steps=1)
tr = Trainer(accelerator="cpu", max_epochs=1, logger=[tb, csv], enable_progress_bar=False, log_every_n_steps=1,
             default_root_dir="root")
tr.fit(m, loader)
out = {"hparams": {k: (list(v) if isinstance(v, tuple) else v) for k, v in m.hparams.items()},
       "initial": sorted(m.hparams_initial), "tb": [tb.name, tb.version, os.path.relpath(tb.log_dir), os.path.relpath(tb.root_dir), os.path.relpath(tb.save_dir)],
       "csv": [csv.name, csv.version, os.path.relpath(csv.log_dir), os.path.relpath(csv.root_dir)],
       "trainer_log_dir": os.path.relpath(tr.log_dir), "logger_is_tb": tr.logger is tb,
       "tb_files": sorted(f for f in os.listdir(tb.log_dir) if not f.startswith("events")),
       "csv_files": sorted(os.listdir(csv.log_dir)),
       "ckpt_dir": sorted(os.path.relpath(os.path.join(dp, f)) for dp, _, fs in os.walk("logs") for f in fs if f.endswith(".ckpt") and f != "last.ckpt"),
       "csv_hparams": open(os.path.join(csv.log_dir, "hparams.yaml")).read()}
path = tr.checkpoint_callback.best_model_path
try:
    M.load_from_checkpoint(path)
    out["load_without_backbone"] = "loaded"
except Exception:
    out["load_without_backbone"] = "raised"
m2 = M.load_from_checkpoint(path, backbone=torch.nn.Linear(4, 4), lr=0.5, map_location="cpu")
out["loaded"] = [m2.hparams.lr, m2.hparams.cfg, torch.equal(m2.head.weight, m.head.weight), m2.training]
m3 = M.load_from_checkpoint(path, backbone=torch.nn.Linear(4, 4), hparams_file=os.path.join(csv.log_dir, "hparams.yaml"))
out["from_hparams_file"] = [m3.hparams.lr, m3.hparams.cfg]
tr2 = Trainer(accelerator="cpu", max_epochs=1, enable_progress_bar=False, default_root_dir="root2")
tr2.fit(M(torch.nn.Linear(4, 4)), loader)
out["default_logger"] = [os.path.relpath(tr2.log_dir), tr2.logger.version, tr2.logger.name]
print(json.dumps(out))
