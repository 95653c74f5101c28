"""`AudioClassificationTask`: log-mel features and SpecAugment on the device, a small CNN, accuracy metrics."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from typing_extensions import override

from dltrain.errors import ConfigurationError
from dltrain.task import Task

from ..metrics import accuracy, confusion_matrix
from .features import batch_features, device_transform

__all__ = ["AudioCNN", "AudioClassificationTask"]


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class AudioCNN(nn.Module):
    """A small CNN over log-mel features ``[B, 1, n_mels, frames]`` -> logits ``[B, num_classes]``.

    Four 3x3 conv blocks (channels ``width, 2w, 4w, 8w``; the first with stride 2, then 2x2 max-pooling
    between blocks), then global
    average pooling, so any feature size works. About 0.1 M parameters at ``width=16``; small enough to train
    on two CPU cores.

    Args:
        num_classes: output classes.
        width: channels of the first block.
        dropout: dropout before the classifier.

    Example:
        >>> AudioCNN(10)(torch.randn(2, 1, 40, 101)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int, width: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        # Normalising the input with BatchNorm learns the level/scale of log-mel values from the data.
        self.input_norm = nn.BatchNorm2d(1)
        self.features = nn.Sequential(
            # Stride 2 in the first block rather than conv + pool: a quarter of the full-resolution activations,
            # which dominate the cost of a network this small on a CPU.
            _block(1, width, stride=2),
            _block(width, 2 * width), nn.MaxPool2d(2),
            _block(2 * width, 4 * width), nn.MaxPool2d(2),
            _block(4 * width, 8 * width),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(8 * width, num_classes))

    @override
    def forward(self, x: Tensor) -> Tensor:
        x = self.features(self.input_norm(x))
        return self.head(x.mean(dim=(-2, -1)))


class AudioClassificationTask(Task):
    """Classify fixed-length clips: batches ``(waveforms [B, T], labels [B])`` from the audio plugin's loaders.

    ``on_after_batch_transfer`` turns waveforms into log-mel features on the device and applies SpecAugment in
    training. Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss`` and ``test/acc``;
    after ``trainer.test`` the confusion matrix (rows: true class, columns: predicted, counts over all
    ranks) is in ``task.confusion_matrix``.

    Args:
        num_classes: number of classes.
        model: any ``nn.Module`` from ``[B, 1, n_mels, frames]`` to logits (default: :class:`AudioCNN`).
        sample_rate: the waveform sample rate (must match the loader's transform).
        n_mels: mel bands.
        n_fft: FFT size in samples (default 25 ms).
        hop_length: frame step in samples (default 10 ms).
        mel_scale: ``"htk"`` or ``"slaney"``.
        freq_mask: SpecAugment largest frequency mask (bins) or ``(min, max)``; 0 disables.
        time_mask: SpecAugment largest time mask (frames) or ``(min, max)``; 0 disables.
        num_freq_masks: SpecAugment frequency masks per clip.
        num_time_masks: SpecAugment time masks per clip.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        total_steps: when given, warm-up then cosine decay over that many optimizer steps; otherwise a constant rate.
        label_smoothing: cross-entropy label smoothing.
        class_names: names for printing the confusion matrix.

    Example:
        >>> task = AudioClassificationTask(num_classes=10, sample_rate=16000)
        >>> import dltrain.plugins
        >>> audio = dltrain.plugins.get("audio")
        >>> train = audio.loader("data/audio-{000000..000001}.tar", "train", batch_size=4,
        ...                      options={"sample_rate": 16000, "clip_seconds": 1.0})
        >>> trainer = dltrain.Trainer(max_epochs=1, logger=False)
        >>> trainer.fit(task, train)
    """

    def __init__(
        self,
        num_classes: int,
        model: nn.Module | None = None,
        *,
        sample_rate: int = 16000,
        n_mels: int = 40,
        n_fft: int | None = None,
        hop_length: int | None = None,
        mel_scale: str = "htk",
        freq_mask: int | tuple[int, int] = 8,
        time_mask: int | tuple[int, int] = 20,
        num_freq_masks: int = 2,
        num_time_masks: int = 2,
        lr: float = 3e-3,
        weight_decay: float = 1e-2,
        total_steps: int | None = None,
        label_smoothing: float = 0.0,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigurationError(f"num_classes must be at least 2, got {num_classes}")
        if mel_scale not in ("htk", "slaney"):
            raise ConfigurationError(f"mel_scale must be 'htk' or 'slaney', not {mel_scale!r}")
        self.save_hyperparameters(ignore=("model",))
        self.num_classes = num_classes
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.lr, self.weight_decay, self.total_steps = lr, weight_decay, total_steps
        self.label_smoothing = label_smoothing
        # The plugin's own device transform: the same features here as for any other task built on the plugin.
        train_features = device_transform(
            "train", sample_rate=sample_rate, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length,
            mel_scale=mel_scale,  # type: ignore[arg-type]
            freq_mask=freq_mask, time_mask=time_mask, num_freq_masks=num_freq_masks, num_time_masks=num_time_masks,
        )
        self.features = train_features.log_mel
        self.spec_augment = train_features.spec_augment
        self.model = model if model is not None else AudioCNN(num_classes)
        self.train_acc = accuracy(num_classes)
        self.val_acc = accuracy(num_classes)
        self.test_acc = accuracy(num_classes)
        self.test_confusion = confusion_matrix(num_classes)
        self.confusion_matrix: Tensor | None = None

    @override
    def forward(self, features: Tensor) -> Tensor:
        return self.model(features)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        """Waveforms ``[B, T]`` (or ``[B, C, T]``) -> log-mel ``[B, C, n_mels, frames]``; SpecAugment in training."""
        # A None batch (every sample skipped with on_error="skip") stays None.
        return batch_features(batch, self.features, self.spec_augment if self.training else None)

    def _shared(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        feats, labels = batch
        logits = self(feats)
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing), logits, labels

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        if batch is None:
            return None  # nothing left of this batch: skip the step
        loss, logits, labels = self._shared(batch)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch is None:
            return
        loss, logits, labels = self._shared(batch)
        self.val_acc(logits, labels)
        self.log("val/loss", loss, sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        if batch is None:
            return
        loss, logits, labels = self._shared(batch)
        self.test_acc(logits, labels)
        self.test_confusion(logits, labels)
        self.log("test/loss", loss, sync_dist=True)
        self.log("test/acc", self.test_acc)

    @override
    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    @override
    def on_test_epoch_end(self) -> None:
        # compute() sums the counts over every rank (torchmetrics syncs when torch.distributed is initialised).
        self.confusion_matrix = self.test_confusion.compute().detach().cpu()
        self.test_confusion.reset()

    def format_confusion_matrix(self) -> str:
        """The last test confusion matrix as a text table (rows: true class, columns: predicted)."""
        if self.confusion_matrix is None:
            return "(no confusion matrix: run trainer.test first)"
        names = self.class_names
        cm = self.confusion_matrix.tolist()
        width = max(5, *(len(n) for n in names), *(len(str(v)) for row in cm for v in row)) + 1
        lines = ["true\\pred".ljust(width + 4) + "".join(n.rjust(width) for n in names)]
        for name, row in zip(names, cm):
            lines.append(name.ljust(width + 4) + "".join(str(v).rjust(width) for v in row))
        return "\n".join(lines)

    @override
    def configure_optimizers(self) -> Any:
        # No weight decay on norms and biases: decaying BatchNorm scales only slows training down.
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() > 1]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() <= 1]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        if not self.total_steps:
            return opt
        # Linear warm-up then cosine decay, held at the floor past total_steps (OneCycleLR would raise there,
        # and the loader's length is only an estimate under some strategies).
        total, warmup = self.total_steps, max(1, self.total_steps // 10)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

