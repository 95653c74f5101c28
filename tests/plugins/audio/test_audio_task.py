"""AudioClassificationTask without a Trainer: device transforms, skipped batches, confusion matrix table."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("soundfile")
import dltrain.plugins
from dltrain.plugins.audio import AudioClassificationTask


def test_plugin_fields():
    audio = dltrain.plugins.get("audio")
    assert audio.name == "audio" and audio.extra == "audio"
    assert set(audio.decoders) == {"wav", "flac", "ogg"}
    assert audio.transform("train").training and not audio.transform("test").training
    assert audio.device_transform("train").spec_augment is not None
    assert audio.device_transform("val").spec_augment is None
    assert audio.tasks["classification"] is AudioClassificationTask
    assert audio.metrics["confusion_matrix"](3).num_classes == 3
    assert callable(audio.collate) and callable(audio.write_shards)


def test_batch_transfer_features_and_augmentation():
    task = AudioClassificationTask(10, sample_rate=16000, freq_mask=(8, 8), time_mask=(20, 20))
    waves, labels = torch.randn(4, 16000), torch.arange(4)
    task.eval()
    feats, y = task.on_after_batch_transfer((waves, labels))
    assert feats.shape == (4, 1, 40, 101) and y is labels
    torch.testing.assert_close(task.on_after_batch_transfer((waves, labels))[0], feats)  # no masks in eval
    task.train()
    masked, _ = task.on_after_batch_transfer((waves, labels))
    assert (masked != feats).any()
    assert task(masked).shape == (4, 10)
    assert task.on_after_batch_transfer(None) is None and task.training_step(None, 0) is None


def test_confusion_matrix_table():
    task = AudioClassificationTask(3, class_names=["yes", "no", "up"])
    assert "run trainer.test" in task.format_confusion_matrix()
    task.confusion_matrix = torch.tensor([[5, 0, 1], [0, 6, 0], [2, 0, 4]])
    lines = task.format_confusion_matrix().splitlines()
    assert lines[0].split()[1:] == ["yes", "no", "up"]
    assert lines[3].split() == ["up", "2", "0", "4"]
