"""profiler="simple": training runs, and the report is written to a file."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(64, 4, generator=g)
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False, profiler="simple",
                  default_root_dir="out")
trainer.fit(Model(), DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16))
print(json.dumps({"loss": float(trainer.callback_metrics["loss"]), "has_profiler": trainer.profiler is not None}))
