"""ModelPruning: global L1 pruning at each epoch end with the lottery-ticket reset, made permanent at the end."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelPruning
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(64, 4, generator=g)
model = Model()
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_checkpointing=False,
                  default_root_dir="out", callbacks=[ModelPruning("l1_unstructured", amount=0.3)])
trainer.fit(model, DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
params = list(model.parameters())
print(json.dumps({"zeros": int(sum((p == 0).sum() for p in params)), "total": sum(p.numel() for p in params),
                  "weights": float(sum(p.sum() for p in params)), "loss": float(trainer.callback_metrics["loss"]),
                  "names": sorted(n for n, _ in model.named_parameters())}))
