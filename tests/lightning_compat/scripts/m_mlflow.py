"""MLFlowLogger with Lightning's arguments: metrics by step, params, tags, the checkpoint folder in the store."""
import json
import os

os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # Lightning's default store is MLflow's folder store

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import MLFlowLogger
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(40, 4, generator=g)
data = TensorDataset(x, x.sum(1, keepdim=True))
logger = MLFlowLogger(experiment_name="compat", tracking_uri="file:./mlruns", tags={"team": "a"}, run_name="one")
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=logger, log_every_n_steps=1,
                  enable_progress_bar=False)
trainer.fit(Model(), DataLoader(data, batch_size=8), DataLoader(data, batch_size=20))
client = logger.experiment
run = client.get_run(logger.run_id)
history = {k: [(m.step, round(m.value, 5)) for m in sorted(client.get_metric_history(logger.run_id, k),
                                                           key=lambda m: m.step)]
           for k in ("train_loss", "val_loss")}
# Steps relative to the first training step: Lightning counts the optimizer steps before a step (from 0), dltrain
# the steps done after it (from 1): README "What differs".
first = history["train_loss"][0][0]
history = {k: [(step - first, value) for step, value in rows] for k, rows in history.items()}
folder = os.path.relpath(trainer.checkpoint_callback.dirpath)
print(json.dumps({"history": history, "lr": run.data.params["lr"], "team": run.data.tags["team"],
                  "status": run.info.status, "name": run.info.run_name,
                  "folder": folder == os.path.join("mlruns", logger.experiment_id, logger.run_id, "checkpoints"),
                  "checkpoints": sorted(n for n in os.listdir(folder) if not n.startswith("last"))}))
