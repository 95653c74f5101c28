"""Several validation loaders: validation_step(batch, batch_idx, dataloader_idx), metrics per loader; with the
default progress bar on (the user's default: it crashed with several loaders, issue 22) and prog_bar values."""
import contextlib
import io
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


def make(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g) + shift
    return TensorDataset(x, x.sum(1, keepdim=True))


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("val_loss", F.mse_loss(self.net(batch[0]), batch[1]), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


seed_everything(0)
model = Model()
err = io.StringIO()
# Where the bar draws: stderr (tqdm), stdout (Lightning's default when rich is installed: RichProgressBar).
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_model_summary=False)
    vals = [DataLoader(make(32, 1), batch_size=8), DataLoader(make(24, 2, shift=1.0), batch_size=8)]
    trainer.fit(model, DataLoader(make(64, 0), batch_size=8), vals)
    results = trainer.validate(model, vals)
bar = trainer.progress_bar_callback
print(json.dumps({"n_results": len(results), "default_bar": bar is not None and bar.is_enabled,
                  "bar_drew_validation": "Validation" in err.getvalue(),
                  "bar_showed_val_loss": "val_loss" in err.getvalue(),
                  **{k: v for r in results for k, v in r.items()}}))
