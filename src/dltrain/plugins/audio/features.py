"""Batch feature extraction and augmentation on the device: log-mel spectrogram and SpecAugment."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn
from typing_extensions import override

from dltrain.data.domain import check_stage

__all__ = ["AudioFeatures", "LogMelSpectrogram", "SpecAugment", "batch_features", "device_transform", "hz_to_mel",
           "mel_filterbank", "mel_to_hz"]

MelScale = Literal["htk", "slaney"]


def hz_to_mel(freq: Tensor, scale: MelScale = "htk") -> Tensor:
    """Hertz to mel.

    ``"htk"``: ``2595 * log10(1 + f / 700)``. ``"slaney"`` (Auditory Toolbox, librosa's default): linear
    below 1 kHz (``3 f / 200``), logarithmic above (``15 + 27 * ln(f / 1000) / ln(6.4)``).
    """
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + freq / 700.0)
    if scale != "slaney":
        raise ValueError(f"mel scale must be 'htk' or 'slaney', not {scale!r}")
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    linear = freq / f_sp
    log = min_log_mel + torch.log(torch.clamp(freq, min=min_log_hz) / min_log_hz) / logstep
    return torch.where(freq >= min_log_hz, log, linear)


def mel_to_hz(mel: Tensor, scale: MelScale = "htk") -> Tensor:
    """Mel to hertz, the inverse of :func:`hz_to_mel`."""
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    if scale != "slaney":
        raise ValueError(f"mel scale must be 'htk' or 'slaney', not {scale!r}")
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(mel >= min_log_mel, min_log_hz * torch.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(
    n_freqs: int,
    n_mels: int,
    sample_rate: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    scale: MelScale = "htk",
    norm: Literal["slaney"] | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Triangular mel filters, ``[n_freqs, n_mels]`` (multiply a power spectrum ``[..., n_freqs]`` by it).

    The filter centres are equally spaced on the mel scale between ``f_min`` and ``f_max``; each triangle
    rises from the previous centre to its own and falls to the next, evaluated at the FFT bin frequencies
    ``k * sample_rate / n_fft``. With ``norm="slaney"`` every filter is scaled to unit area (``2 / bandwidth``),
    so wide high-frequency bands do not dominate.

    Args:
        n_freqs: FFT bins, ``n_fft // 2 + 1``.
        n_mels: mel bands.
        sample_rate: the audio's sample rate.
        f_min: lowest band edge in Hz.
        f_max: highest band edge in Hz (default: ``sample_rate / 2``).
        scale: ``"htk"`` or ``"slaney"`` mel scale (see :func:`hz_to_mel`).
        norm: ``None`` (peak 1) or ``"slaney"`` (unit area).
        dtype: dtype of the result (built in float64, then cast).

    Example:
        >>> mel_filterbank(201, 40, 16000).shape
        torch.Size([201, 40])
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}")
    bins = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    edges = mel_to_hz(
        torch.linspace(
            float(hz_to_mel(torch.tensor(f_min, dtype=torch.float64), scale)),
            float(hz_to_mel(torch.tensor(f_max, dtype=torch.float64), scale)),
            n_mels + 2,
            dtype=torch.float64,
        ),
        scale,
    )
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    fb = torch.clamp(torch.minimum(rising, falling), min=0.0)
    if norm == "slaney":
        fb = fb * (2.0 / (upper - lower))
    elif norm is not None:
        raise ValueError(f"norm must be None or 'slaney', not {norm!r}")
    return fb.to(dtype)


class LogMelSpectrogram(nn.Module):
    """Waveforms ``[..., time]`` -> log-mel features ``[..., n_mels, frames]``, computed in batch on the device.

    ``log(mel_filterbank^T @ |STFT|^power + eps)`` with a periodic Hann window and centred frames
    (reflect padding of ``n_fft // 2`` each side, so ``frames = time // hop_length + 1``).

    Args:
        sample_rate: the audio's sample rate.
        n_fft: FFT size (default 400: 25 ms at 16 kHz).
        hop_length: frame step (default 160: 10 ms at 16 kHz).
        win_length: window length, zero-padded to ``n_fft`` (default ``n_fft``).
        n_mels: mel bands.
        f_min: lowest band edge in Hz.
        f_max: highest band edge in Hz.
        mel_scale: ``"htk"`` (default) or ``"slaney"``; see :func:`mel_filterbank`.
        norm: filter normalisation, ``None`` or ``"slaney"``.
        power: 2 for power, 1 for magnitude.
        eps: added before the log so silence stays finite.

    Example:
        >>> logmel = LogMelSpectrogram(sample_rate=16000, n_mels=40)
        >>> logmel(torch.randn(8, 16000)).shape
        torch.Size([8, 40, 101])
    """

    window: Tensor
    fbank: Tensor

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        win_length: int | None = None,
        n_mels: int = 40,
        f_min: float = 0.0,
        f_max: float | None = None,
        mel_scale: MelScale = "htk",
        norm: Literal["slaney"] | None = None,
        power: float = 2.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.win_length = n_fft if win_length is None else win_length
        self.n_mels, self.power, self.eps = n_mels, power, eps
        # Buffers (not parameters): they follow .to(device) and land in checkpoints, but are not trained.
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True), persistent=False)
        self.register_buffer(
            "fbank",
            mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max, mel_scale, norm, torch.float32),
            persistent=False,
        )

    @override
    def forward(self, waveform: Tensor) -> Tensor:
        shape = waveform.shape
        # STFT and log in float32 even under a bf16/fp16 autocast: half precision loses the low-energy bins.
        dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = waveform.reshape(-1, shape[-1]).to(dtype)
            spec = torch.stft(
                x,
                self.n_fft,
                hop_length=self.hop_length,
                win_length=self.win_length,
                window=self.window.to(dtype),
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )  # [N, n_freqs, frames]
            mag = spec.abs()
            power = mag.square() if self.power == 2.0 else mag.pow(self.power)
            mel = torch.matmul(power.transpose(-1, -2), self.fbank.to(dtype)).transpose(-1, -2)
            out = torch.log(mel + self.eps)
        return out.reshape(*shape[:-1], self.n_mels, out.shape[-1])

    @override
    def extra_repr(self) -> str:
        return f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, n_mels={self.n_mels}"


def _widths(spec: int | tuple[int, int]) -> tuple[int, int]:
    lo, hi = (0, spec) if isinstance(spec, int) else spec
    if not 0 <= lo <= hi:
        raise ValueError(f"mask width must be an int >= 0 or (min, max) with 0 <= min <= max, got {spec!r}")
    return int(lo), int(hi)


class SpecAugment(nn.Module):
    """SpecAugment frequency and time masking (Park et al., 2019) of ``[..., freq, time]`` features.

    Each example gets its own masks: ``num_freq_masks`` bands of ``f`` consecutive bins and
    ``num_time_masks`` spans of ``t`` consecutive frames, set to ``mask_value`` (default: the example's mean,
    which after a log is a quieter-than-speech level rather than an extreme). Widths are drawn uniformly from
    ``[0, max]`` for an int, or ``[min, max]`` for a tuple; positions uniformly where the mask fits. Masks may
    overlap. Active only in training mode (``module.train()``); in eval mode it returns its input.

    Args:
        freq_mask: largest frequency mask width in bins, or ``(min, max)``.
        time_mask: largest time mask width in frames, or ``(min, max)``.
        num_freq_masks: frequency masks per example.
        num_time_masks: time masks per example.
        max_time_fraction: cap a time mask at this fraction of the frames (the paper's ``p``).
        mask_value: ``"mean"`` or a number.

    Example:
        >>> aug = SpecAugment(freq_mask=8, time_mask=20)
        >>> aug(torch.randn(4, 1, 40, 101)).shape
        torch.Size([4, 1, 40, 101])
    """

    def __init__(
        self,
        freq_mask: int | tuple[int, int] = 8,
        time_mask: int | tuple[int, int] = 20,
        num_freq_masks: int = 2,
        num_time_masks: int = 2,
        max_time_fraction: float = 1.0,
        mask_value: float | Literal["mean"] = "mean",
    ) -> None:
        super().__init__()
        self.freq_mask, self.time_mask = _widths(freq_mask), _widths(time_mask)
        self.num_freq_masks, self.num_time_masks = num_freq_masks, num_time_masks
        self.max_time_fraction, self.mask_value = max_time_fraction, mask_value

    def masks(self, features: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw the masks for ``features [..., F, T]``: boolean ``[..., F, 1]`` and ``[..., 1, T]`` (True = masked)."""
        *lead, n_freq, n_time = features.shape
        t_hi = min(self.time_mask[1], int(self.max_time_fraction * n_time))
        freq = self._band(lead, n_freq, self.num_freq_masks, self.freq_mask[0], self.freq_mask[1], features.device,
                          generator)
        time = self._band(lead, n_time, self.num_time_masks, min(self.time_mask[0], t_hi), t_hi, features.device,
                          generator)
        return freq.unsqueeze(-1), time.unsqueeze(-2)

    @staticmethod
    def _band(
        lead: list[int], size: int, count: int, lo: int, hi: int, device: torch.device,
        generator: torch.Generator | None,
    ) -> Tensor:
        mask = torch.zeros(*lead, size, dtype=torch.bool, device=device)
        hi = min(hi, size)
        lo = min(lo, hi)
        if count == 0 or hi == 0:
            return mask
        # Drawn with torch on the CPU generator then moved: the same draws on every device for a given seed.
        shape = (*lead, count, 1)
        width = torch.randint(lo, hi + 1, shape, generator=generator)
        start = (torch.rand(shape, generator=generator) * (size - width + 1)).long()
        pos = torch.arange(size)
        hit = (pos >= start) & (pos < start + width)  # [..., count, size]
        return mask | hit.any(dim=-2).to(device)

    @override
    def forward(self, features: Tensor) -> Tensor:
        if not self.training:
            return features
        freq, time = self.masks(features)
        masked = freq | time
        if self.mask_value == "mean":
            fill = features.mean(dim=(-2, -1), keepdim=True)
        else:
            fill = torch.as_tensor(self.mask_value, dtype=features.dtype, device=features.device)
        return torch.where(masked, fill, features)

    @override
    def extra_repr(self) -> str:
        return (f"freq_mask={self.freq_mask}, time_mask={self.time_mask}, num_freq_masks={self.num_freq_masks}, "
                f"num_time_masks={self.num_time_masks}")


class AudioFeatures(nn.Module):
    """A ``(waveforms [B, T] or [B, C, T], labels)`` batch -> ``(log-mel [B, C, n_mels, frames], labels)``.

    Applies SpecAugment when given one. The audio plugin's ``device_transform`` and `AudioClassificationTask`'s.

    Args:
        log_mel: the feature extractor.
        spec_augment: masks applied to the features (``None``: none, as in evaluation).

    Example:
        >>> features = AudioFeatures(LogMelSpectrogram(sample_rate=16000, n_mels=40))
        >>> feats, labels = features((torch.randn(8, 16000), torch.arange(8)))
        >>> feats.shape
        torch.Size([8, 1, 40, 101])
    """

    def __init__(self, log_mel: LogMelSpectrogram, spec_augment: SpecAugment | None = None) -> None:
        super().__init__()
        self.log_mel = log_mel
        self.spec_augment = spec_augment

    @override
    def forward(self, batch: Any) -> Any:
        return batch_features(batch, self.log_mel, self.spec_augment)


def batch_features(batch: Any, log_mel: nn.Module, spec_augment: nn.Module | None) -> Any:
    """See `AudioFeatures`; ``None`` (a batch whose every sample was skipped) stays ``None``."""
    if batch is None:
        return None
    waves, labels = batch
    feats = log_mel(waves)
    if feats.dim() == 3:
        feats = feats.unsqueeze(1)  # mono: add the channel axis the CNN expects
    if spec_augment is not None:
        feats = spec_augment(feats)
    return feats, labels


def device_transform(
    stage: str,
    *,
    sample_rate: int = 16000,
    n_mels: int = 40,
    n_fft: int | None = None,
    hop_length: int | None = None,
    mel_scale: MelScale = "htk",
    freq_mask: int | tuple[int, int] = 8,
    time_mask: int | tuple[int, int] = 20,
    num_freq_masks: int = 2,
    num_time_masks: int = 2,
) -> AudioFeatures:
    """The plugin's ``device_transform(stage, **options)``.

    Log-mel (25 ms windows, 10 ms hops unless given), SpecAugment in ``"train"`` only.
    """
    log_mel = LogMelSpectrogram(
        sample_rate=sample_rate,
        n_fft=n_fft if n_fft is not None else round(0.025 * sample_rate),
        hop_length=hop_length if hop_length is not None else round(0.010 * sample_rate),
        n_mels=n_mels,
        mel_scale=mel_scale,
    )
    augment = SpecAugment(freq_mask, time_mask, num_freq_masks, num_time_masks)
    return AudioFeatures(log_mel, augment if check_stage(stage) == "train" else None)
