"""What a checkpoint load calls, as in Lightning: the task's ``on_load_checkpoint`` runs before the weights are loaded
(so that it can rewrite ``checkpoint["state_dict"]``: renamed layers of an older checkpoint), for a resumed fit and for
``validate``/``test``/``predict(ckpt_path=...)``; the evaluation stages also give the datamodule its saved state.

Found by a probe run under both libraries (issue 22): ``trainer.test(ckpt_path="best")`` never called the task's
``on_load_checkpoint``, and a fit resumed from a checkpoint whose keys the hook renames failed before the hook ran.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import dltrain
from dltrain.callbacks import ModelCheckpoint
from tests.helpers.tasks import loader


class OldLayout(dltrain.Task):
    """A model as an older version of the code saved it: its layer is called ``old``."""

    def __init__(self) -> None:
        super().__init__()
        self.old = nn.Linear(8, 1)

    def forward(self, x):
        return self.old(x)

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.mse_loss(self(batch[0]), batch[1]))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", F.mse_loss(self(batch[0]), batch[1]))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def on_save_checkpoint(self, checkpoint):
        checkpoint["extra"] = {"epoch": self.current_epoch}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class NewLayout(OldLayout):
    """The same model after a rename (``old`` -> ``new``); its ``on_load_checkpoint`` upgrades old checkpoints."""

    def __init__(self) -> None:
        super().__init__()
        del self.old
        self.new = nn.Linear(8, 1)
        self.loaded: list[tuple[object, bool]] = []

    def forward(self, x):
        return self.new(x)

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("old.")]:
            state["new." + key[len("old."):]] = state.pop(key)
        # the weights are not in the task yet: Lightning calls this hook before loading them
        self.loaded.append((checkpoint.get("extra"), torch.equal(self.new.weight, state["new.weight"])))


class Data(dltrain.DataModule):
    def __init__(self) -> None:
        super().__init__()
        self.restored: list[dict] = []

    def train_dataloader(self):
        return loader(n=32)

    def val_dataloader(self):
        return loader(n=16)

    def test_dataloader(self):
        return loader(n=16)

    def predict_dataloader(self):
        return loader(n=16)

    def state_dict(self):
        return {"shuffle_seed": 7}

    def load_state_dict(self, state):
        self.restored.append(state)


def _trainer(tmp_path, **kwargs) -> dltrain.Trainer:
    return dltrain.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                           default_root_dir=str(tmp_path), **kwargs)


def test_the_task_hook_runs_before_the_weights_load_in_fit_and_in_every_evaluation_stage(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1)
    _trainer(tmp_path, max_epochs=1, callbacks=[ckpt]).fit(OldLayout(), datamodule=Data())
    path = ckpt.best_model_path
    saved = torch.load(path, weights_only=False)["state_dict"]["old.weight"]

    # validate/test/predict(ckpt_path=...): the hook, then the weights it renamed; the datamodule's state
    for stage in ("validate", "test", "predict"):
        task, data = NewLayout(), Data()
        getattr(_trainer(tmp_path), stage)(task, datamodule=data, ckpt_path=path)
        assert task.loaded == [({"epoch": 0}, False)], stage
        assert torch.equal(task.new.weight.detach(), saved), stage
        assert data.restored == [{"shuffle_seed": 7}], stage

    # a fit resumed from it: the same order
    task = NewLayout()
    _trainer(tmp_path, max_epochs=2).fit(task, datamodule=Data(), ckpt_path=path)
    assert task.loaded == [({"epoch": 0}, False)]
    assert not torch.equal(task.new.weight.detach(), saved)  # it trained on from the renamed weights
