"""Lightning's own front-page example (its README's LitAutoEncoder, `import lightning as L`), on generated images
instead of MNIST: fit with limit_train_batches, the checkpoint loaded back by the path Lightning's docs give
(lightning_logs/version_0/checkpoints/epoch=0-step=100.ckpt) with the modules passed again, then the encoder used
(issue 22: `import lightning as L` was not in the rename)."""
import json
import os

import lightning as L
import torch
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

L.seed_everything(0)  # not in Lightning's README: without it, the two runs start from different weights
encoder = nn.Sequential(nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 3))
decoder = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 28 * 28))


class LitAutoEncoder(L.LightningModule):
    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def training_step(self, batch, batch_idx):
        x, _ = batch
        x = x.view(x.size(0), -1)
        z = self.encoder(x)
        x_hat = self.decoder(z)
        loss = nn.functional.mse_loss(x_hat, x)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        optimizer = optim.Adam(self.parameters(), lr=1e-3)
        return optimizer


autoencoder = LitAutoEncoder(encoder, decoder)
g = torch.Generator().manual_seed(0)
images = torch.rand(1600, 1, 28, 28, generator=g)
train_loader = DataLoader(TensorDataset(images, torch.zeros(1600)), batch_size=8)

trainer = L.Trainer(limit_train_batches=100, max_epochs=1, enable_progress_bar=False, accelerator="cpu")
trainer.fit(model=autoencoder, train_dataloaders=train_loader)

checkpoint = "./lightning_logs/version_0/checkpoints/epoch=0-step=100.ckpt"
autoencoder = LitAutoEncoder.load_from_checkpoint(checkpoint, encoder=encoder, decoder=decoder)
encoder = autoencoder.encoder
encoder.eval()
fake_image_batch = torch.rand(4, 28 * 28, device=autoencoder.device, generator=g)
embeddings = encoder(fake_image_batch)
print(json.dumps({"step": trainer.global_step, "loss": float(trainer.callback_metrics["train_loss"]),
                  "embeddings": embeddings.detach().round(decimals=4).tolist(), "exists": os.path.exists(checkpoint),
                  "is_module": isinstance(autoencoder, L.LightningModule), "version": isinstance(L.__version__, str)}))
