"""self.hparams.lr, a checkpoint, and LightningModule.load_from_checkpoint (hparams come back, overrides)."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self, lr: float = 0.1, hidden: int = 8, note: str = "a"):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, self.hparams.hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(self.hparams.hidden, 1))

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(48, 3, generator=g)
model = Model(lr=0.05, hidden=6)
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False)
trainer.fit(model, DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
trainer.save_checkpoint("model.ckpt")
loaded = Model.load_from_checkpoint("model.ckpt", note="b")
same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
print(json.dumps({"hparams": dict(loaded.hparams), "same_weights": same, "lr": loaded.hparams.lr,
                  "loss": float(trainer.callback_metrics["loss"])}))
