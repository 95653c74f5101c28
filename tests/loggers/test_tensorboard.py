from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dltrain.loggers import Logger, TensorBoardLogger


def _events(log_dir: str) -> EventAccumulator:
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_versions_like_lightning(tmp_path):
    a = TensorBoardLogger(tmp_path, name="exp")
    assert isinstance(a, Logger)
    assert not (tmp_path / "exp").exists()  # building it writes nothing (every rank may build one)
    a.log_metrics({"loss": 1.0}, step=1)
    assert a.log_dir == str(tmp_path / "exp" / "version_0")
    b = TensorBoardLogger(tmp_path, name="exp")
    b.log_metrics({"loss": 2.0}, step=1)
    assert b.version == 1 and os.path.isdir(tmp_path / "exp" / "version_1")
    c = TensorBoardLogger(tmp_path, name="exp", version="custom", sub_dir="train")
    assert c.log_dir == str(tmp_path / "exp" / "custom" / "train")
    d = TensorBoardLogger(tmp_path, name="exp", version=7)
    assert d.log_dir == str(tmp_path / "exp" / "version_7")
    for logger in (a, b, c, d):
        logger.finalize("success")
    assert TensorBoardLogger(tmp_path).log_dir == str(tmp_path / "lightning_logs" / "version_0")


def test_metrics_and_hparams_read_back(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="exp")
    from torch.utils.tensorboard import SummaryWriter

    assert isinstance(logger.experiment, SummaryWriter)
    logger.log_hyperparams({"lr": 0.1, "layers": [1, 2], "opt": {"momentum": 0.9}, "obj": object()})
    for step in range(1, 4):
        logger.log_metrics({"train/loss": 1.0 / step, "lr": 0.1}, step=step * 10)
    logger.save()
    acc = _events(logger.log_dir)
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [10, 20, 30]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 1 / 3])
    assert acc.Scalars("hp_metric")[0].value == -1.0
    hparams_plugin = acc.PluginTagToContent("hparams")
    assert hparams_plugin  # the HPARAMS tab has this run
    logger.finalize("success")
    import yaml

    with open(os.path.join(logger.log_dir, "hparams.yaml")) as f:
        saved = yaml.safe_load(f)
    assert saved["lr"] == 0.1 and saved["layers"] == [1, 2] and saved["opt"] == {"momentum": 0.9}
    assert saved["obj"].startswith("<object")


def test_prefix_no_hp_metric_and_resume(tmp_path):
    first = TensorBoardLogger(tmp_path, prefix="run", default_hp_metric=False)
    first.log_hyperparams({"lr": 0.1})
    first.log_metrics({"loss": 1.0}, step=1)
    state = first.state_dict()
    first.finalize("failed")
    TensorBoardLogger(tmp_path).log_metrics({"other": 0.0}, step=0)  # another run takes version_1

    resumed = TensorBoardLogger(tmp_path, prefix="run")
    resumed.load_state_dict(state)
    resumed.log_metrics({"loss": 0.5}, step=2)
    resumed.finalize("success")
    acc = _events(resumed.log_dir)
    assert resumed.log_dir == first.log_dir
    assert [(e.step, e.value) for e in acc.Scalars("run-loss")] == [(1, 1.0), (2, 0.5)]
    assert "hp_metric" not in acc.Tags()["scalars"]


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_log_graph(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    off = TensorBoardLogger(tmp_path, name="off")
    off.log_graph(model, torch.zeros(2, 4))  # Lightning's rule: only with log_graph=True
    assert not (tmp_path / "off").exists()
    on = TensorBoardLogger(tmp_path, name="on", log_graph=True)
    model.example_input_array = torch.zeros(2, 4)
    on.log_graph(model)
    on.finalize("success")
    assert _events(on.log_dir).Graph() is not None


def test_with_trainer(tmp_path):
    import dltrain
    from tests.helpers.tasks import TinyTask, loader

    task = TinyTask()
    logger = TensorBoardLogger(tmp_path)
    trainer = dltrain.Trainer(
        accelerator="cpu", max_epochs=2, logger=logger, log_every_n_steps=1, enable_progress_bar=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )
    trainer.fit(task, loader(32))
    acc = _events(logger.log_dir)
    assert len(acc.Scalars("train/loss")) == 8  # 4 steps per epoch, logged every step
    assert acc.PluginTagToContent("hparams")  # the task's hparams and the Trainer's settings
