"""A GAN with manual optimization and two optimizers (toggle_optimizer, manual_backward)."""
import json

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class GAN(LightningModule):
    def __init__(self, latent: int = 4):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = torch.nn.Sequential(torch.nn.Linear(latent, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        self.discriminator = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def training_step(self, batch):
        real = batch[0]
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], self.hparams.latent)
        self.toggle_optimizer(opt_g)
        fake = self.generator(z)
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), torch.ones(real.shape[0], 1))
        self.manual_backward(g_loss)
        opt_g.step()
        opt_g.zero_grad()
        self.untoggle_optimizer(opt_g)
        self.toggle_optimizer(opt_d)
        d_real = F.binary_cross_entropy_with_logits(self.discriminator(real), torch.ones(real.shape[0], 1))
        d_fake = F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), torch.zeros(real.shape[0], 1))
        d_loss = (d_real + d_fake) / 2
        self.manual_backward(d_loss)
        opt_d.step()
        opt_d.zero_grad()
        self.untoggle_optimizer(opt_d)
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss})

    def configure_optimizers(self):
        return [torch.optim.Adam(self.generator.parameters(), lr=2e-3, betas=(0.5, 0.999)),
                torch.optim.Adam(self.discriminator.parameters(), lr=2e-3, betas=(0.5, 0.999))]


seed_everything(2)
g = torch.Generator().manual_seed(0)
data = TensorDataset(torch.randn(128, 2, generator=g) * 0.5 + torch.tensor([2.0, -1.0]))
model = GAN()
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False)
trainer.fit(model, DataLoader(data, batch_size=32))
print(json.dumps({"g_loss": float(trainer.callback_metrics["g_loss"]), "d_loss": float(trainer.callback_metrics["d_loss"]),
                  "global_step": trainer.global_step}))
