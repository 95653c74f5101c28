"""EMAWeightAveraging on 2 processes (torchrun). Lightning refuses weight averaging of sharded models, so its run
is the DDP reference; the renamed script runs under dltrain with COMPAT_STRATEGY=fsdp2 (the averaged copy kept
shard by shard) and must give the same losses, averaged weights and checkpoint. Both read the data through the
script's own DistributedSampler (use_distributed_sampler=False): Lightning's own sampler would shuffle the training
data under DDP even for a loader that does not shuffle, and dltrain keeps the loader's order. At each epoch's end
the task also reaches the strategy by Lightning's names (reduce, broadcast, barrier, world_size, lightning_module)."""
import json
import os

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 1)
        self.strategy_seen = []

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self(batch[0]), batch[1])
        self.log("train_loss", loss)  # rank zero's own batch (the same under both: strided split)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.mse_loss(self(batch[0]), batch[1]), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def on_train_epoch_end(self):
        strategy = self.trainer.strategy
        rank = self.global_rank
        summed = strategy.reduce(torch.tensor([rank + 1.0, 10.0 * rank]), reduce_op="sum")
        mean = strategy.reduce(torch.tensor(float(rank)))  # Lightning's default reduce_op is "mean"
        sent = strategy.broadcast({"epoch": self.current_epoch, "from": rank}, src=0)
        strategy.barrier("epoch_end")
        self.strategy_seen.append([summed.tolist(), float(mean), sent, strategy.world_size,
                                   strategy.is_global_zero == (rank == 0), strategy.lightning_module is self,
                                   str(strategy.root_device)])


torch.set_num_threads(1)
seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(128, 4, generator=g)
data = TensorDataset(x, x[:, :2].sum(1, keepdim=True))
checkpoints = ModelCheckpoint(dirpath="ckpt", filename="ema")
trainer = Trainer(accelerator="cpu", devices=2, strategy=os.environ.get("COMPAT_STRATEGY", "ddp"), max_epochs=2,
                  logger=False, default_root_dir="out", num_sanity_val_steps=0, use_distributed_sampler=False,
                  callbacks=[EMAWeightAveraging(decay=0.8), checkpoints])
model = Model()
world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])


def split(batch_size):
    return DataLoader(data, batch_size=batch_size,
                      sampler=DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False))


trainer.fit(model, split(8), split(16))
fit_val = float(trainer.callback_metrics["val_loss"])
if trainer.is_global_zero:
    loaded = Model.load_from_checkpoint(checkpoints.best_model_path)
    print(json.dumps({"fit_val": fit_val, "train_loss": float(trainer.callback_metrics["train_loss"]),
                      "loaded_weights": float(sum(p.sum() for p in loaded.parameters())),
                      "loaded_head": loaded.head.weight.flatten().tolist(), "strategy": model.strategy_seen}))
