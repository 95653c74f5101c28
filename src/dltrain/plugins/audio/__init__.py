"""The audio plugin.

Decode WAV/FLAC/OGG from shards, resample, crop or pad, log-mel and SpecAugment on the device, and a ready
classification task.

Install with ``pip install 'dltrain[audio]'`` (soundfile, scipy, espeakng-loader).

Example:
    >>> import dltrain.plugins
    >>> audio = dltrain.plugins.get("audio")
    >>> train = audio.loader("data/audio-{000000..000001}.tar", "train", batch_size=4, on_error="skip",
    ...                      options={"sample_rate": 16000, "clip_seconds": 1.0})
    >>> task = audio.tasks["classification"](num_classes=10, sample_rate=16000)
"""

from __future__ import annotations

from dltrain.plugins import Plugin, require

# Fail at import with the extra to install, not later inside a loader worker.
require("soundfile", plugin="audio", extra="audio")
require("scipy.signal", plugin="audio", extra="audio")

from ..metrics import CLASSIFICATION_METRICS  # noqa: E402
from .features import (  # noqa: E402
    AudioFeatures,
    LogMelSpectrogram,
    SpecAugment,
    batch_features,
    device_transform,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
)
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
    sample_transform,
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
    "AudioFeatures",
    "AudioTransform",
    "LogMelSpectrogram",
    "SpecAugment",
    "batch_features",
    "collate",
    "crop_or_pad",
    "decode_audio",
    "decode_field",
    "device_transform",
    "eval_transform",
    "hz_to_mel",
    "mel_filterbank",
    "mel_to_hz",
    "plugin",
    "resample",
    "sample_transform",
    "select_channels",
    "train_transform",
    "write_audio_shards",
]


plugin = Plugin(
    name="audio",
    extra="audio",
    decoders=dict.fromkeys(AUDIO_EXTENSIONS, decode_field),
    transform=sample_transform,
    collate=collate,
    device_transform=device_transform,
    tasks={"classification": AudioClassificationTask},
    metrics=CLASSIFICATION_METRICS,
    write_shards=write_audio_shards,
)
