"""Per-sample audio handling on the CPU (runs in the loader workers): decode, channels, resample, crop or pad.

Bad input is handled like this (and nowhere else):

- an unsupported or corrupt file: :class:`~dltrain.errors.DataError` (the data layer adds shard and key; with
  ``on_error="skip"`` the sample is skipped and counted);
- a sample rate other than the one expected: resampled (``scipy.signal.resample_poly``, Kaiser-windowed sinc);
- more channels than expected (stereo where mono is expected): mixed down by averaging, or the channels you
  name are selected;
- an empty clip (0 frames): :class:`~dltrain.errors.DataError` naming the shard and the key (skipped and
  counted with ``on_error="skip"``), because padding silence up to the clip length would invent a label.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from dltrain.data.domain import check_stage
from dltrain.errors import DataError
from dltrain.plugins import require

__all__ = [
    "AUDIO_EXTENSIONS",
    "Audio",
    "AudioDecodeError",
    "AudioTransform",
    "collate",
    "crop_or_pad",
    "decode_audio",
    "decode_field",
    "eval_transform",
    "resample",
    "sample_transform",
    "select_channels",
    "train_transform",
]

#: Shard field extensions the plugin decodes (what libsndfile reads without extra codecs).
AUDIO_EXTENSIONS: tuple[str, ...] = ("flac", "wav", "ogg")

ChannelSpec = Literal["mix"] | int | Sequence[int]


class Audio(NamedTuple):
    """A decoded clip.

    Attributes:
        waveform: ``float32`` array of shape ``[channels, frames]`` in ``[-1, 1]``.
        sample_rate: frames per second.

    Example:
        >>> clip = decode_audio(flac_bytes)
        >>> clip.waveform.shape, clip.sample_rate
        ((1, 16000), 16000)
    """

    waveform: np.ndarray
    sample_rate: int


def _soundfile() -> Any:
    return require("soundfile", plugin="audio", extra="audio")


def decode_audio(data: bytes) -> Audio:
    """Decode WAV, FLAC or OGG/Vorbis bytes (the format is read from the bytes, not the extension).

    Args:
        data: the raw file contents from a shard field.

    Returns:
        An :class:`Audio` with a ``[channels, frames]`` float32 waveform.

    Raises:
        DataError: the bytes are not a readable WAV/FLAC/OGG file (unsupported or corrupt).

    Example:
        >>> audio = decode_audio(flac_bytes)  # the bytes of a FLAC file: one second at 16 kHz
        >>> audio.waveform.shape, audio.sample_rate
        ((1, 16000), 16000)
    """
    sf = _soundfile()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DataError(f"audio decoder expected bytes, got {type(data).__name__}")
    try:
        with sf.SoundFile(io.BytesIO(bytes(data))) as f:
            fmt = f.format
            # MP3 and the exotic formats libsndfile also reads are not part of the contract: refuse them
            # rather than silently depend on the libsndfile build of the machine.
            if fmt not in ("WAV", "WAVEX", "FLAC", "OGG", "RF64", "W64"):
                raise DataError(f"unsupported audio format {fmt!r}; the audio plugin reads WAV, FLAC and OGG")
            wave = f.read(dtype="float32", always_2d=True)  # [frames, channels]
            rate = int(f.samplerate)
    except DataError:
        raise
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / TypeError for bad bytes
        head = bytes(data[:4])
        raise DataError(
            f"cannot decode audio ({len(data)} bytes starting {head!r}): {err}. The audio plugin reads WAV, "
            "FLAC and OGG/Vorbis; convert other formats first"
        ) from err
    return Audio(np.ascontiguousarray(wave.T), rate)


class AudioDecodeError(ValueError):
    """Raised by :func:`decode_field` so that the data layer wraps it in a ``DataError`` naming shard and key."""


def decode_field(data: bytes) -> Audio:
    """:func:`decode_audio` as a shard field decoder (the plugin's ``decoders``).

    The data layer passes a ``DataError`` raised by a decoder through unchanged, so one without shard and key
    would lose where it happened; a plain exception is wrapped with both.
    """
    try:
        return decode_audio(data)
    except DataError as err:
        raise AudioDecodeError(err.reason) from err


@lru_cache(maxsize=32)
def _resample_filter(up: int, down: int) -> np.ndarray:
    # The same filter scipy's resample_poly designs by default (Kaiser beta 5, 10 zero crossings each side),
    # designed once per rate pair instead of once per clip: the design costs more than filtering a short clip.
    from scipy.signal import firwin

    max_rate = max(up, down)
    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def resample(waveform: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample along the last axis with a polyphase Kaiser-windowed sinc filter (``scipy.signal.resample_poly``).

    Args:
        waveform: ``[..., frames]`` array.
        orig_rate: its sample rate.
        new_rate: the wanted sample rate.

    Example:
        >>> resample(np.zeros((1, 22050), np.float32), 22050, 16000).shape
        (1, 16000)
    """
    if orig_rate == new_rate:
        return waveform
    if orig_rate <= 0 or new_rate <= 0:
        raise DataError(f"cannot resample from {orig_rate} Hz to {new_rate} Hz")
    require("scipy", plugin="audio", extra="audio")
    from scipy.signal import resample_poly

    g = np.gcd(int(orig_rate), int(new_rate))
    up, down = int(new_rate) // g, int(orig_rate) // g
    out = resample_poly(waveform, up, down, axis=-1, window=_resample_filter(up, down))
    return out.astype(np.float32, copy=False)


def select_channels(waveform: np.ndarray, channels: ChannelSpec = "mix") -> np.ndarray:
    """Reduce a ``[channels, frames]`` waveform to what the task expects.

    Args:
        waveform: ``[channels, frames]`` array.
        channels: ``"mix"`` averages every channel into one (stereo to mono); an ``int`` keeps that channel;
            a sequence of ints keeps those channels in that order.

    Returns:
        ``[frames]`` for ``"mix"`` or an ``int``, ``[len(channels), frames]`` for a sequence.

    Example:
        >>> select_channels(np.ones((2, 5), np.float32)).shape
        (5,)
    """
    if channels == "mix":
        return waveform.mean(axis=0) if waveform.shape[0] > 1 else waveform[0]
    index = [channels] if isinstance(channels, int) else list(channels)
    if max(index) >= waveform.shape[0]:
        raise DataError(f"channel {max(index)} requested but the clip has {waveform.shape[0]} channel(s)")
    picked = waveform[index]
    return picked[0] if isinstance(channels, int) else picked


def crop_or_pad(
    waveform: np.ndarray, length: int, *, random: bool, generator: np.random.Generator | None = None
) -> np.ndarray:
    """Crop or zero-pad the last axis to ``length`` frames.

    Args:
        waveform: ``[..., frames]`` array.
        length: frames wanted.
        random: choose the crop (or where the clip sits in the padding) at random, as in training; otherwise
            take the centre, as in evaluation.
        generator: numpy generator for the random offset (default: a fresh one seeded from torch's RNG, which
            the loader seeds per worker).

    Example:
        >>> crop_or_pad(np.arange(6.0), 4, random=False)
        array([1., 2., 3., 4.])
    """
    frames = waveform.shape[-1]
    if frames == length:
        return waveform
    slack = abs(frames - length)
    if random:
        rng = generator if generator is not None else np.random.default_rng(int(torch.randint(2**31, ()).item()))
        offset = int(rng.integers(0, slack + 1))
    else:
        offset = slack // 2
    if frames > length:
        return waveform[..., offset : offset + length]
    pad = [(0, 0)] * (waveform.ndim - 1) + [(offset, slack - offset)]
    return np.pad(waveform, pad)


class AudioTransform:
    """Per-sample transform.

    A shard sample dict -> ``{"waveform": float32 tensor, "label": int}`` (``-1`` when ``label_key`` is
    ``None``: unlabelled, the rule of every domain, see `dltrain.data.domain`).

    Picklable (a plain class, not a closure) so it can run in loader worker processes.

    Args:
        sample_rate: the task's sample rate; other rates are resampled to it.
        clip_seconds: every clip is cropped or zero-padded to this length (``None``: keep the length; then
            batches need equal-length clips).
        training: random crop/placement when True, centre when False.
        channels: see :func:`select_channels` (default: mix down to mono).
        audio_key: the field holding the audio; default: the first of ``flac``, ``wav``, ``ogg`` present.
        label_key: the field holding the integer class (``None``: unlabelled data, the label is ``-1``).

    Example:
        >>> t = AudioTransform(sample_rate=16000, clip_seconds=1.0, training=False)
        >>> out = t({"__key__": "a", "flac": flac_bytes, "cls": 7})
        >>> out["waveform"].shape, out["label"]
        (torch.Size([16000]), 7)
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        clip_seconds: float | None = 1.0,
        training: bool = True,
        channels: ChannelSpec = "mix",
        audio_key: str | None = None,
        label_key: str | None = "cls",
    ) -> None:
        self.sample_rate = int(sample_rate)
        self.num_samples = None if clip_seconds is None else round(clip_seconds * sample_rate)
        self.training = training
        self.channels = channels
        self.audio_key = audio_key
        self.label_key = label_key

    def _find_audio(self, sample: dict) -> tuple[str, Any]:
        if self.audio_key is not None:
            if self.audio_key not in sample:
                raise DataError(f"sample has no {self.audio_key!r} field (fields: {_fields(sample)})",
                                url=sample.get("__url__"), key=sample.get("__key__"))
            return self.audio_key, sample[self.audio_key]
        for ext in AUDIO_EXTENSIONS:
            if ext in sample:
                return ext, sample[ext]
        raise DataError(
            f"sample has no audio field: expected one of {', '.join(AUDIO_EXTENSIONS)}, found {_fields(sample)} "
            "(convert other formats to FLAC, or name the field with audio_key=)",
            url=sample.get("__url__"), key=sample.get("__key__"),
        )

    def __call__(self, sample: dict) -> Any:
        """Decode, resample, crop or pad the sample's audio: ``{"waveform", "label"}``.

        Raises:
            DataError: the audio cannot be decoded or the label is bad (naming the shard and key).
        """
        url, key = sample.get("__url__"), sample.get("__key__")
        _, value = self._find_audio(sample)
        try:
            audio = value if isinstance(value, Audio) else decode_audio(value)
            if audio.waveform.shape[-1] == 0:
                raise DataError("empty audio clip (0 frames); remove it from the shards or use on_error='skip'")
            wave = select_channels(audio.waveform, self.channels)
            wave = resample(wave, audio.sample_rate, self.sample_rate)
            if self.num_samples is not None:
                wave = crop_or_pad(wave, self.num_samples, random=self.training)
        except DataError as err:
            if err.url is None and err.key is None:  # add where it happened
                raise DataError(err.reason, url=url, key=key) from err
            raise
        tensor = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        if self.label_key is None:
            return {"waveform": tensor, "label": -1}
        if self.label_key not in sample:
            raise DataError(f"sample has no label field {self.label_key!r} (fields: {_fields(sample)})",
                            url=url, key=key)
        return {"waveform": tensor, "label": _to_int(sample[self.label_key], url, key)}


def _fields(sample: dict) -> str:
    return ", ".join(sorted(k for k in sample if not k.startswith("__"))) or "none"


def _to_int(value: Any, url: str | None, key: str | None) -> int:
    try:
        if isinstance(value, (bytes, bytearray)):
            value = value.decode().strip()
        return int(value)
    except (TypeError, ValueError, UnicodeDecodeError) as err:
        raise DataError(f"label {value!r} is not an integer class index", url=url, key=key) from err


def train_transform(**kwargs: Any) -> AudioTransform:
    """:class:`AudioTransform` for training (random crop). Takes the same keyword arguments."""
    return AudioTransform(training=True, **kwargs)


def eval_transform(**kwargs: Any) -> AudioTransform:
    """:class:`AudioTransform` for evaluation (centre crop). Takes the same keyword arguments."""
    return AudioTransform(training=False, **kwargs)


def sample_transform(stage: str, **options: Any) -> AudioTransform:
    """The plugin's ``transform(stage, **options)``.

    An :class:`AudioTransform` (random crop in ``"train"``, centred otherwise) with ``options`` as its keyword
    arguments.
    """
    return AudioTransform(training=check_stage(stage) == "train", **options)


def collate(samples: list) -> Any:
    """Stack ``{"waveform", "label"}`` samples (or pairs) into ``(waveforms [B, ...], labels [B])``.

    Unlabelled samples carry the label ``-1``.

    Example:
        >>> w, y = collate([{"waveform": torch.zeros(4), "label": 1}, {"waveform": torch.ones(4), "label": 2}])
        >>> w.shape, y.tolist()
        (torch.Size([2, 4]), [1, 2])
    """
    if not samples:
        raise DataError("cannot collate an empty batch")
    if isinstance(samples[0], dict):
        if any("label" not in s for s in samples):
            raise DataError("an audio sample without a 'label' field: unlabelled samples carry the label -1 "
                            "(AudioTransform(label_key=None))")
        samples = [(s["waveform"], s["label"]) for s in samples]
    if isinstance(samples[0], Tensor):
        lengths = {w.shape for w in samples}
        if len(lengths) > 1:
            raise DataError(f"clips of different lengths in one batch ({sorted(lengths)}); set clip_seconds")
        return torch.stack(samples)
    waves, labels = zip(*samples)
    lengths = {w.shape for w in waves}
    if len(lengths) > 1:
        raise DataError(f"clips of different lengths in one batch ({sorted(lengths)}); set clip_seconds")
    return torch.stack(list(waves)), torch.as_tensor(labels, dtype=torch.long)
