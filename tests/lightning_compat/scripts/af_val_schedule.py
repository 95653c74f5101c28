"""When validation runs, for every combination of epoch length, val_check_interval and check_val_every_n_epoch."""
import json

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset


class Count(Callback):
    def __init__(self):
        self.calls = []
    def on_validation_epoch_end(self, trainer, task):
        if not trainer.sanity_checking:
            self.calls.append(trainer.global_step)

class M(LightningModule):
    def __init__(self, stop_at=None):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)
        self.stop_at = stop_at
    def training_step(self, batch, batch_idx):
        if self.stop_at is not None and self.global_step == self.stop_at:
            self.trainer.should_stop = True
        return self.net(batch[0]).pow(2).mean()
    def validation_step(self, batch, batch_idx):
        self.log("v", self.net(batch[0]).pow(2).mean())
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

out = {}
for n in (5, 6):
    x = torch.randn(8 * n, 4)
    for interval in (None, 1.0, 0.5, 0.34, 2, 3):
        for every in (1, 2, None):
            if every is None and (interval is None or isinstance(interval, float)):
                continue
            for stop_at in (None, 4):
                c = Count()
                key = f"n={n} interval={interval} every={every} stop={stop_at}"
                try:
                    tr = Trainer(accelerator="cpu", max_epochs=4, enable_progress_bar=False, logger=False,
                                 enable_checkpointing=False, callbacks=[c], enable_model_summary=False,
                                 num_sanity_val_steps=0, val_check_interval=interval, check_val_every_n_epoch=every)
                    tr.fit(M(stop_at), DataLoader(TensorDataset(x), batch_size=8), DataLoader(TensorDataset(x[:8]), batch_size=8))
                    out[key] = [c.calls, tr.global_step]
                except Exception:
                    out[key] = "error"
print(json.dumps(out))
