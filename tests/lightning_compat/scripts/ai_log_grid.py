"""What self.log puts where: callback_metrics, logged_metrics (what a logger got), progress_bar_metrics and the
CSV file, for on_step/on_epoch/prog_bar/logger/reduce_fx from training_step, validation_step and the epoch hooks
(190 cases; issue 22: 142 of 208 differed: epoch-hook defaults, logger=False values in logged_metrics). Left out:
on_step=True in validation_step, whose per-batch values Lightning also sends to the loggers and the progress bar
(dltrain keeps them for the epoch's aggregate: docs/guides/from-lightning.md). Errors are compared by their
occurrence, not their class."""
# ruff: noqa: B023  (each grid cell's task class reads that cell's loop variables, and is used in that cell only)
import csv
import itertools
import json
import os

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

out = {}
grid = itertools.product(["training_step", "validation_step", "on_train_epoch_end", "on_validation_epoch_end"],
                         [None, True, False], [None, True, False], [False, True], [True, False], ["mean", "max"])
for hook, on_step, on_epoch, prog_bar, to_logger, reduce_fx in grid:
    if on_step is False and on_epoch is False:
        continue
    if hook.endswith("epoch_end") and on_step:
        continue  # Lightning refuses on_step=True in epoch-end hooks
    if hook == "validation_step" and on_step:
        continue  # a documented difference (above)

    class M(LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def _log(self, value):
            self.log("m", value, on_step=on_step, on_epoch=on_epoch, prog_bar=prog_bar, logger=to_logger,
                     reduce_fx=reduce_fx)

        def training_step(self, batch, batch_idx):
            if hook == "training_step":
                self._log(float(self.global_step) + 1)
            return self.net(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            if hook == "validation_step":
                self._log(float(batch_idx) + 10 * self.current_epoch)

        def on_train_epoch_end(self):
            if hook == "on_train_epoch_end":
                self._log(float(self.current_epoch) + 0.5)

        def on_validation_epoch_end(self):
            if hook == "on_validation_epoch_end":
                self._log(float(self.current_epoch) + 0.25)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    key = f"{hook} step={on_step} epoch={on_epoch} bar={prog_bar} logger={to_logger} fx={reduce_fx}"
    folder = f"logs{len(out)}"
    x = torch.randn(24, 4, generator=torch.Generator().manual_seed(0))
    tr = Trainer(accelerator="cpu", max_epochs=2, enable_progress_bar=False, enable_checkpointing=False,
                 enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
                 logger=CSVLogger(folder, name="", version=""))
    try:
        tr.fit(M(), DataLoader(TensorDataset(x), batch_size=8), DataLoader(TensorDataset(x[:16]), batch_size=8))
    except Exception:
        out[key] = "error"  # MisconfigurationException in Lightning, DltrainError in dltrain
        continue
    path = os.path.join(tr.logger.log_dir, "metrics.csv")
    rows = list(csv.DictReader(open(path))) if os.path.exists(path) else []
    logged = [(r.get("step"), r.get("epoch"), k, float(v)) for r in rows for k, v in r.items() if k.startswith("m") and v]
    out[key] = {"cm": {k: float(v) for k, v in sorted(tr.callback_metrics.items()) if k.startswith("m")},
                "lm": {k: float(v) for k, v in sorted(tr.logged_metrics.items()) if k.startswith("m")},
                "bar": {k: float(v) for k, v in sorted(tr.progress_bar_metrics.items()) if k.startswith("m")},
                "csv_keys": sorted({k for _, _, k, _ in logged}), "csv_rows": len(logged)}
print(json.dumps(out))
