"""The audio plugin: decode WAV/FLAC/OGG from shards, resample, crop or pad, log-mel and SpecAugment on the
device, and a ready classification task.

Install with ``pip install 'dltrain[audio]'`` (soundfile, scipy, espeakng-loader).

Example:
    >>> import dltrain.plugins
    >>> audio = dltrain.plugins.get("audio")
    >>> from dltrain.data import StreamingDataset  # doctest: +SKIP
    >>> train = StreamingDataset(urls, batch_size=64, decode=audio.decoders,  # doctest: +SKIP
    ...                          map=audio.transforms["train"](sample_rate=16000, clip_seconds=1.0),
    ...                          collate_fn=audio.collate, on_error="skip")
    >>> task = audio.tasks["classification"](num_classes=10, sample_rate=16000)
"""

from __future__ import annotations

from typing import Any

from dltrain.plugins import Plugin, require

# Fail at import with the extra to install, not later inside a loader worker.
require("soundfile", plugin="audio", extra="audio")
require("scipy.signal", plugin="audio", extra="audio")

from .features import LogMelSpectrogram, SpecAugment, hz_to_mel, mel_filterbank, mel_to_hz  # noqa: E402
from .io import (  # noqa: E402
    AUDIO_EXTENSIONS,
    Audio,
    AudioTransform,
    collate,
    crop_or_pad,
    decode_audio,
    decode_field,
    eval_transform,
    resample,
    select_channels,
    train_transform,
)
from .shards import write_audio_shards  # noqa: E402
from .task import AudioClassificationTask, AudioCNN  # noqa: E402

__all__ = [
    "AUDIO_EXTENSIONS",
    "Audio",
    "AudioCNN",
    "AudioClassificationTask",
    "AudioTransform",
    "LogMelSpectrogram",
    "SpecAugment",
    "collate",
    "crop_or_pad",
    "decode_audio",
    "decode_field",
    "eval_transform",
    "hz_to_mel",
    "mel_filterbank",
    "mel_to_hz",
    "plugin",
    "resample",
    "select_channels",
    "train_transform",
    "write_audio_shards",
]


def _accuracy(num_classes: int, **kwargs: Any) -> Any:
    from torchmetrics.classification import MulticlassAccuracy

    return MulticlassAccuracy(num_classes, **{"average": "micro", **kwargs})


def _confusion_matrix(num_classes: int, **kwargs: Any) -> Any:
    from torchmetrics.classification import MulticlassConfusionMatrix

    return MulticlassConfusionMatrix(num_classes, **kwargs)


plugin = Plugin(
    name="audio",
    extra="audio",
    decoders=dict.fromkeys(AUDIO_EXTENSIONS, decode_field),
    transforms={"train": train_transform, "eval": eval_transform},
    collate=collate,
    device_transforms={"log_mel": LogMelSpectrogram, "spec_augment": SpecAugment},
    tasks={"classification": AudioClassificationTask},
    metrics={"accuracy": _accuracy, "confusion_matrix": _confusion_matrix},
    write_shards=write_audio_shards,
)
