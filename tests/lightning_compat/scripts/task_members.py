"""LightningModule members: freeze/unfreeze, to_torchscript, toggled_optimizer, all_gather, hparams_initial,
example_input_array, an overridden backward, strict_loading."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class GAN(LightningModule):
    def __init__(self, lr=0.05):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.g, self.d = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
        self.example_input_array = torch.zeros(3, 4)
        self.flags = []

    def forward(self, x):
        return self.d(self.g(x))

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        with self.toggled_optimizer(opt_d):
            self.flags.append([self.g.weight.requires_grad, self.d.weight.requires_grad])
            d_loss = F.mse_loss(self(batch[0]), batch[1])
            self.manual_backward(d_loss)
            opt_d.step()
            opt_d.zero_grad()
        with self.toggled_optimizer(opt_g):
            g_loss = self(batch[0]).pow(2).mean()
            self.manual_backward(g_loss)
            opt_g.step()
            opt_g.zero_grad()
        gathered = self.all_gather(d_loss.detach())
        self.log("d_loss", gathered.mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.g.parameters(), lr=self.hparams.lr), torch.optim.SGD(self.d.parameters(), lr=0.1)


class Doubling(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self.net(batch[0]), batch[1])

    def backward(self, loss, *args, **kwargs):
        (2 * loss).backward()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(32, 4, generator=g)
data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
gan = GAN()
gan.hparams.lr = 0.2
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                  default_root_dir="out")
trainer.fit(gan, data)
gan.freeze()
frozen = [gan.training, any(p.requires_grad for p in gan.parameters())]
gan.unfreeze()
scripted = gan.to_torchscript()
traced = gan.to_torchscript(method="trace")
doubling = Doubling()
trainer2 = Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                   default_root_dir="out2")
trainer2.fit(doubling, data)
print(json.dumps({"flags": gan.flags[:2], "frozen": frozen, "unfrozen": gan.training,
                  "hparams_initial": dict(gan.hparams_initial), "hparams": dict(gan.hparams),
                  "scripted": scripted(x[:2]).tolist(), "traced": traced(x[:2]).tolist(),
                  "d_loss": float(trainer.callback_metrics["d_loss"]), "fabric": gan.fabric is None,
                  "strict_loading": gan.strict_loading,
                  "doubling_weights": float(doubling.net.weight.sum())}))
