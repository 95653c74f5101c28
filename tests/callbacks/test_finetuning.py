from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import dltrain
from dltrain.callbacks import BackboneFinetuning, BaseFinetuning
from dltrain.errors import ConfigurationError


def _backbone() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8))


def _trainable(module: nn.Module) -> int:
    return sum(p.requires_grad for p in module.parameters())


def test_flatten_freeze_and_make_trainable():
    inner = nn.Linear(2, 2)
    parent = nn.Module()
    parent.weight = nn.Parameter(torch.zeros(1))  # a parent that holds a parameter itself
    parent.child = inner
    flat = BaseFinetuning.flatten_modules([nn.ModuleDict({"a": parent}), [nn.ReLU()]])
    assert flat == [parent, inner, flat[2]] and isinstance(flat[2], nn.ReLU)

    bb = _backbone()
    BaseFinetuning.freeze(bb, train_bn=True)  # BatchNorm keeps training
    assert _trainable(bb) == 2 and bb[1].track_running_stats
    BaseFinetuning.freeze(bb, train_bn=False)
    assert _trainable(bb) == 0 and not bb[1].track_running_stats
    assert list(BaseFinetuning.filter_params(bb, requires_grad=False)) == list(bb.parameters())
    BaseFinetuning.make_trainable(bb)
    assert _trainable(bb) == 6 and bb[1].track_running_stats
    assert len(list(BaseFinetuning.filter_params(bb, train_bn=False))) == 4
    with pytest.raises(TypeError, match="Module"):
        BaseFinetuning.flatten_modules([3])


def test_unfreeze_and_add_param_groups(caplog):
    head, bb = nn.Linear(8, 1), _backbone()
    BaseFinetuning.freeze(bb, train_bn=False)
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    BaseFinetuning.unfreeze_and_add_param_group(bb, opt, train_bn=True)  # Lightning's name; lr: first group's / 10
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == pytest.approx(0.05)
    assert len(opt.param_groups[1]["params"]) == 6
    with caplog.at_level(logging.WARNING):
        BaseFinetuning.unfreeze_and_add_param_groups(bb, opt, lr=0.1)  # all there already: no new group
    assert len(opt.param_groups) == 2 and "already in a param group" in caplog.text
    other = nn.Linear(3, 3)
    BaseFinetuning.unfreeze_and_add_param_groups(other, opt, lr=0.01, initial_denom_lr=100.0)  # lr given: as is
    assert opt.param_groups[2]["lr"] == 0.01


class _Finetune(dltrain.Task):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _backbone()
        self.head = nn.Linear(8, 1)
        self.seen: list[tuple[int, int, int]] = []  # (epoch, trainable parameters, param groups)

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)

    def on_train_epoch_start(self):
        opt = self.trainer.optimizers[0]
        self.seen.append((self.trainer.current_epoch, _trainable(self), len(opt.param_groups)))

    def configure_optimizers(self):
        return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.1)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def _trainer(tmp_path, callbacks, max_epochs: int) -> dltrain.Trainer:
    return dltrain.Trainer(
        accelerator="cpu", max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )


def test_callback_hooks_in_lightning_order():
    """The callback's own contract, driven as Lightning's Trainer drives it (no dltrain Trainer involved)."""

    class Trainer:  # the trainer view the callback reads
        optimizers: list[torch.optim.Optimizer] = []
        current_epoch = 0

    task, trainer = _Finetune(), Trainer()
    cb = BackboneFinetuning(unfreeze_backbone_at_epoch=2, backbone_initial_lr=0.01, train_bn=False)
    cb.setup(trainer, task, "fit")  # type: ignore[arg-type]
    trainer.optimizers = [task.configure_optimizers()]
    cb.on_fit_start(trainer, task)  # type: ignore[arg-type]
    lrs = []
    for epoch in range(5):
        trainer.current_epoch = epoch
        cb.on_train_epoch_start(trainer, task)  # type: ignore[arg-type]
        groups = trainer.optimizers[0].param_groups
        lrs.append([g["lr"] for g in groups])
    assert lrs == [[0.1], [0.1], [0.1, 0.01], [0.1, 0.02], [0.1, 0.04]]
    assert _trainable(task) == 8
    state = cb.state_dict()
    # train_bn=False: the BatchNorm trains again but stays out of the new group (Lightning's rule)
    assert [len(g["params"]) for g in state["internal_optimizer_metadata"][0]] == [2, 4]
    assert state["internal_optimizer_metadata"][0][1]["params"][0] == "backbone.0.weight"

    # Resume: a new callback and a fresh optimizer get the backbone's group back before the optimizer state.
    fresh, trainer2 = _Finetune(), Trainer()
    cb2 = BackboneFinetuning(unfreeze_backbone_at_epoch=2, backbone_initial_lr=0.01, train_bn=False)
    cb2.load_state_dict(state)
    cb2.setup(trainer2, fresh, "fit")  # type: ignore[arg-type]
    trainer2.optimizers = [fresh.configure_optimizers()]
    cb2.on_fit_start(trainer2, fresh)  # type: ignore[arg-type]
    opt = trainer2.optimizers[0]
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]  # the groups as they were added ...
    assert opt.param_groups[1]["params"][0] is fresh.backbone[0].weight
    opt.load_state_dict(trainer.optimizers[0].state_dict())  # ... so that the optimizer's state loads
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.04]
    trainer2.current_epoch = 5
    cb2.on_train_epoch_start(trainer2, fresh)  # type: ignore[arg-type]
    assert opt.param_groups[1]["lr"] == 0.08 and cb2.previous_backbone_lr == 0.08


def test_backbone_needed():
    class NoBackbone(dltrain.Task):
        pass

    with pytest.raises(ConfigurationError, match="backbone"):
        BackboneFinetuning().setup(None, NoBackbone(), "fit")  # type: ignore[arg-type]


def test_backbone_frozen_until_epoch_2_with_trainer(tmp_path):
    task = _Finetune()
    cb = BackboneFinetuning(unfreeze_backbone_at_epoch=2, backbone_initial_lr=0.01)
    frozen_before = [p.detach().clone() for p in task.backbone[0].parameters()]
    trainer = _trainer(tmp_path, [cb], max_epochs=4)
    trainer.fit(task, _loader())
    # train_bn=True: the BatchNorm's 2 parameters and the head's 2 train from the start; 8 in all from epoch 2.
    assert task.seen == [(0, 4, 1), (1, 4, 1), (2, 8, 2), (3, 8, 2)]
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == [0.1, 0.02]
    assert not all(torch.equal(a, b) for a, b in zip(frozen_before, task.backbone[0].parameters()))


def test_resume_keeps_added_param_groups(tmp_path):
    task = _Finetune()
    trainer = _trainer(tmp_path, [BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_lr=0.01)], 3)
    trainer.fit(task, _loader())
    trainer.save_checkpoint(tmp_path / "ft.ckpt")

    resumed = _Finetune()
    cb = BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_lr=0.01)
    trainer2 = _trainer(tmp_path, [cb], 4)
    trainer2.fit(resumed, _loader(), ckpt_path=tmp_path / "ft.ckpt")
    assert [g["lr"] for g in trainer2.optimizers[0].param_groups] == [0.1, 0.04]
    assert resumed.seen == [(3, 8, 2)]
