"""Everyday Lightning: a DataModule with prepare_data/setup, torchmetrics objects logged, ReduceLROnPlateau on a
monitored value, ModelCheckpoint top-k with a filename template, EarlyStopping, gradient clipping, on_save_checkpoint /
on_load_checkpoint, test(ckpt_path="best"), predict from the datamodule, load_from_checkpoint, the CSV columns, and
what the Trainer's metric dicts hold after fit (issue 22: on_load_checkpoint was not called by test(ckpt_path=...),
and logged_metrics lacked the last step's values)."""
import json
import os

import torch
import torchmetrics
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import RunningStage, TrainerFn, TrainerStatus
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class DM(LightningDataModule):
    def __init__(self, n=64):
        super().__init__()
        self.save_hyperparameters()
        self.stages = []

    def prepare_data(self):
        self.stages.append("prepare")

    def setup(self, stage):
        self.stages.append(stage)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(self.hparams.n, 4, generator=g)
        y = (x.sum(1) > 0).long()
        self.ds = TensorDataset(x, y)

    def train_dataloader(self):
        return DataLoader(self.ds, batch_size=8)

    def val_dataloader(self):
        return DataLoader(self.ds, batch_size=16)

    def test_dataloader(self):
        return DataLoader(self.ds, batch_size=16)

    def predict_dataloader(self):
        return DataLoader(self.ds, batch_size=32)


class Model(LightningModule):
    def __init__(self, lr=0.1, hidden=8):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=2)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=2)
        self.saved_extra = None
        self.seen_dm = None

    def forward(self, x):
        return self.net(x)

    def on_fit_start(self):
        self.seen_dm = type(self.trainer.datamodule).__name__
        state = self.trainer.state
        self.states = [state.fn == TrainerFn.FITTING, state.status == TrainerStatus.RUNNING, str(state.fn)]

    def on_validation_start(self):
        stage = self.trainer.state.stage
        self.states.append([str(stage), stage == RunningStage.SANITY_CHECKING or stage == "validate",
                            stage.evaluating, stage.dataloader_prefix])

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_acc.update(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", self.val_acc, on_epoch=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.cross_entropy(self(x), y))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0]).argmax(1)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["extra"] = {"epoch_seen": self.current_epoch}

    def on_load_checkpoint(self, checkpoint):
        self.saved_extra = checkpoint.get("extra")

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}


seed_everything(0)
dm = DM()
model = Model()
ckpt = ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=2, filename="{epoch}-{val_loss:.3f}")
early = EarlyStopping(monitor="val_loss", patience=3, mode="min")
trainer = Trainer(accelerator="cpu", max_epochs=4, logger=CSVLogger("logs"), callbacks=[ckpt, early],
                  gradient_clip_val=0.5, enable_progress_bar=False, enable_model_summary=False, deterministic=True)
trainer.fit(model, datamodule=dm)
out = {
    "dm_stages": dm.stages, "seen_dm": model.seen_dm, "states": model.states,
    "after": [str(trainer.state.fn), str(trainer.state.status), trainer.state.status.stopped, trainer.state.stage],
    "epoch": trainer.current_epoch, "step": trainer.global_step,
    "callback_metrics": sorted(trainer.callback_metrics), "logged": sorted(trainer.logged_metrics),
    "progress": sorted(trainer.progress_bar_metrics),
    "val_loss": float(trainer.callback_metrics["val_loss"]), "train_acc": float(trainer.callback_metrics["train_acc"]),
    "best_score": float(ckpt.best_model_score), "best_name": os.path.basename(ckpt.best_model_path),
    "kept": sorted(os.path.basename(k) for k in ckpt.best_k_models),
    "same_cb": trainer.checkpoint_callback is ckpt, "same_es": trainer.early_stopping_callback is early,
    "es_wait": early.wait_count, "lr": trainer.optimizers[0].param_groups[0]["lr"],
    "num_val_batches": trainer.num_val_batches, "num_training_batches": trainer.num_training_batches,
    "log_dir": os.path.relpath(trainer.log_dir),
}
res = trainer.test(model, datamodule=dm, ckpt_path="best")
out["test"] = {k: round(v, 6) for k, v in res[0].items()}
out["loaded_extra"] = model.saved_extra
preds = trainer.predict(model, datamodule=dm)
out["preds"] = [p.tolist() for p in preds]
loaded = Model.load_from_checkpoint(ckpt.best_model_path)
out["hparams"] = dict(loaded.hparams)
out["metrics_csv_header"] = sorted(open(os.path.join(trainer.log_dir, "metrics.csv")).readline().strip().split(","))
print(json.dumps(out))
