"""ImageClassificationTask: model by name or module, loss with/without mixing, metrics, local weights."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("torchvision")

from dltrain.errors import CheckpointError, ConfigurationError
from dltrain.plugins.vision import ImageClassificationTask, load_weights


class _Recorder:
    """Stands in for the Trainer's metric store: records what the task logs."""

    def __init__(self) -> None:
        self.logged: dict[str, Any] = {}

    def log(self, name: str, value: Any, **options: Any) -> None:
        self.logged[name] = value


def _tiny(num_classes: int = 4) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))


def _attach(task: ImageClassificationTask) -> _Recorder:
    rec = _Recorder()
    task._results = rec
    return rec


def test_torchvision_model_by_name_and_unknown_name() -> None:
    task = ImageClassificationTask("mobilenet_v3_small", num_classes=7)
    assert task(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert task.hparams["model"] == "mobilenet_v3_small" and task.hparams["num_classes"] == 7
    with pytest.raises(ConfigurationError, match="unknown torchvision model 'resnet9000'"):
        ImageClassificationTask("resnet9000", num_classes=3)


def test_training_step_with_hard_labels_logs_loss_and_acc() -> None:
    task = ImageClassificationTask(_tiny(), num_classes=4, label_smoothing=0.1)
    rec = _attach(task)
    task.train()
    batch = task.on_after_batch_transfer((torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])))
    loss = task.training_step(batch, 0)
    assert loss.ndim == 0 and loss.requires_grad
    assert {"train/loss", "train/acc"} <= set(rec.logged)


def test_mixup_runs_in_training_only_and_gives_soft_targets() -> None:
    task = ImageClassificationTask(_tiny(), num_classes=4, mixup_alpha=0.2, cutmix_alpha=1.0)
    rec = _attach(task)
    batch = (torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1]))
    task.train()
    images, targets = task.on_after_batch_transfer(batch)
    assert targets.shape == (6, 4)
    loss = task.training_step((images, targets), 0)
    assert torch.isfinite(loss) and "train/acc" not in rec.logged
    task.eval()
    assert task.on_after_batch_transfer(batch) is batch


def test_validation_metrics_top1_top5() -> None:
    task = ImageClassificationTask(nn.Identity(), num_classes=6)
    rec = _attach(task)
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 0], [0, 9, 1, 1, 1, 1], [9, 0, 1, 2, 3, 4]])
    labels = torch.tensor([0, 1, 5])  # top-1: 2/3 right; the third is 2nd-best -> in top-5
    task.eval()
    task.validation_step((logits, labels), 0)
    assert set(rec.logged) == {"val/loss", "val/acc", "val/acc_top5"}
    assert float(rec.logged["val/acc"].compute()) == pytest.approx(2 / 3)
    assert float(rec.logged["val/acc_top5"].compute()) == pytest.approx(1.0)
    task.test_step((logits, labels), 0)
    assert "test/acc" in rec.logged and rec.logged["test/acc"] is not rec.logged["val/acc"]


def test_top5_dropped_for_few_classes() -> None:
    task = ImageClassificationTask(_tiny(3), num_classes=3)
    assert task.top_k == [1]


def test_configure_optimizers_no_decay_on_bias_and_cosine() -> None:
    task = ImageClassificationTask(_tiny(), num_classes=4, lr=0.5, warmup_steps=2, total_steps=10)
    config = task.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.25) and lrs[1] == pytest.approx(0.5) and lrs[-1] < 0.05
    plain = ImageClassificationTask(_tiny(), num_classes=4, optimizer="adamw", scheduler="none").configure_optimizers()
    assert isinstance(plain, torch.optim.AdamW)


def test_weights_from_a_local_file_skip_a_head_of_another_shape(tmp_path) -> None:
    source = ImageClassificationTask("mobilenet_v3_small", num_classes=1000)
    path = tmp_path / "mnv3.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.model.state_dict().items()}}, path)
    with pytest.warns(UserWarning, match="another shape"):
        task = ImageClassificationTask("mobilenet_v3_small", num_classes=10, weights_path=path)
    assert torch.equal(task.model.features[0][0].weight, source.model.features[0][0].weight)
    assert task.model.classifier[-1].out_features == 10


def test_bad_weights_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(_tiny(), tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_weights(_tiny(), tmp_path / "junk.pt")
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        load_weights(_tiny(), tmp_path / "other.pt")
