"""Fine-tuning: a backbone frozen by a BaseFinetuning callback, unfrozen at epoch 2 into a new param group."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import BaseFinetuning
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Unfreeze(BaseFinetuning):
    def __init__(self, at_epoch: int = 2):
        super().__init__()
        self.at_epoch = at_epoch

    def freeze_before_training(self, pl_module):
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module, current_epoch, optimizer):
        if current_epoch == self.at_epoch:
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, train_bn=True)


class Transfer(LightningModule):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.BatchNorm1d(12), torch.nn.ReLU())
        self.head = torch.nn.Linear(12, 3)
        self.seen = []

    def on_train_epoch_end(self):
        self.seen.append([sum(p.requires_grad for p in self.parameters()), len(self.trainer.optimizers[0].param_groups)])

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self.head(self.backbone(batch[0])), batch[1])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.1)


seed_everything(5)
g = torch.Generator().manual_seed(0)
x = torch.randn(96, 6, generator=g)
data = TensorDataset(x, (x[:, :3].argmax(1)))
model = Transfer()
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=4, logger=False, enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False, callbacks=[Unfreeze()])
trainer.fit(model, DataLoader(data, batch_size=16))
print(json.dumps({"seen": model.seen, "train_loss": float(trainer.callback_metrics["train_loss"]),
                  "lrs": [g["lr"] for g in trainer.optimizers[0].param_groups]}))
