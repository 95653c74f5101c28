"""Log-mel against a float64 numpy reference, mel scales, SpecAugment mask sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("soundfile")
from dltrain.plugins.audio import LogMelSpectrogram, SpecAugment, hz_to_mel, mel_filterbank, mel_to_hz


def _np_mel(f: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    # Slaney: linear below 1 kHz, log above.
    return np.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + 27.0 * np.log(np.maximum(f, 1e-9) / 1000.0) / np.log(6.4))


def _np_mel_inv(m: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0))


def _np_filterbank(n_fft: int, n_mels: int, sr: int, scale: str, norm: str | None) -> np.ndarray:
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    pts = _np_mel_inv(np.linspace(_np_mel(np.array(0.0), scale), _np_mel(np.array(sr / 2), scale), n_mels + 2), scale)
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        for k, f in enumerate(freqs):
            if lo < f <= c:
                fb[k, m] = (f - lo) / (c - lo)
            elif c < f < hi:
                fb[k, m] = (hi - f) / (hi - c)
        if norm == "slaney":
            fb[:, m] *= 2.0 / (hi - lo)
    return fb


def _np_logmel(x: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int, scale: str, norm, eps: float):
    x = np.asarray(x, np.float64)
    padded = np.pad(x, n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    n_frames = 1 + (len(padded) - n_fft) // hop
    frames = np.stack([padded[i * hop : i * hop + n_fft] * window for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # [frames, freqs]
    mel = power @ _np_filterbank(n_fft, n_mels, sr, scale, norm)
    return np.log(mel + eps).T, mel.T


@pytest.mark.parametrize("scale,norm", [("htk", None), ("slaney", "slaney")])
def test_logmel_matches_numpy_float64_reference(scale, norm):
    rng = np.random.default_rng(0)
    sr, n_fft, hop, n_mels = 16000, 400, 160, 40
    t = np.arange(sr) / sr
    # Speech-like test signal: two tones, a chirp and noise, so every band has energy.
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t) \
        + 0.1 * np.sin(2 * np.pi * (100 + 3000 * t) * t) + 0.05 * rng.standard_normal(sr)
    ref_log, ref_mel = _np_logmel(x, sr, n_fft, hop, n_mels, scale, norm, 1e-6)
    module = LogMelSpectrogram(sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels, mel_scale=scale, norm=norm)
    out = module(torch.tensor(x, dtype=torch.float32)[None])[0].double().numpy()
    assert out.shape == ref_log.shape == (n_mels, sr // hop + 1)
    # float32 features vs the float64 reference: relative error of the log-mel values and of the mel power.
    rel_log = np.abs(out - ref_log) / np.maximum(np.abs(ref_log), 1.0)
    assert rel_log.max() < 1e-4, rel_log.max()
    rel_mel = np.abs(np.exp(out) - 1e-6 - ref_mel) / ref_mel
    assert np.median(rel_mel) < 1e-5 and rel_mel.max() < 1e-3
    # Float64 input is computed in float64 (only the window and filterbank buffers are float32, so that the
    # module also runs on devices without float64): then every value matches closely.
    out64 = module(torch.tensor(x, dtype=torch.float64)[None])[0].numpy()
    assert (np.abs(out64 - ref_log) / np.maximum(np.abs(ref_log), 1.0)).max() < 2e-5


def test_filterbank_matches_reference_and_scales_invert():
    for scale, norm in [("htk", None), ("slaney", None), ("slaney", "slaney"), ("htk", "slaney")]:
        fb = mel_filterbank(257, 64, 22050, scale=scale, norm=norm).numpy()
        np.testing.assert_allclose(fb, _np_filterbank(512, 64, 22050, scale, norm), rtol=1e-9, atol=1e-12)
    f = torch.linspace(0, 8000, 101, dtype=torch.float64)
    for scale in ("htk", "slaney"):
        torch.testing.assert_close(mel_to_hz(hz_to_mel(f, scale), scale), f)
    assert abs(float(hz_to_mel(torch.tensor(1000.0), "htk")) - 1000.0) < 0.1  # HTK: 1 kHz ~ 1000 mel
    assert float(hz_to_mel(torch.tensor(1000.0), "slaney")) == pytest.approx(15.0)


def test_logmel_batch_shapes_and_autocast():
    module = LogMelSpectrogram(16000)
    x = torch.randn(3, 2, 8000)
    assert module(x).shape == (3, 2, 40, 51)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, module(x))


def test_specaugment_masks_have_configured_sizes():
    aug = SpecAugment(freq_mask=(5, 5), time_mask=(7, 7), num_freq_masks=1, num_time_masks=1)
    feats = torch.randn(16, 1, 40, 101)
    g = torch.Generator().manual_seed(0)
    freq, time = aug.masks(feats, generator=g)
    assert freq.shape == (16, 1, 40, 1) and time.shape == (16, 1, 1, 101)
    assert (freq.sum(dim=(-2, -1)) == 5).all() and (time.sum(dim=(-2, -1)) == 7).all()
    for row in freq.reshape(16, 40):  # one contiguous band
        idx = row.nonzero().flatten()
        assert idx.max() - idx.min() == 4


def test_specaugment_width_distribution_and_application():
    aug = SpecAugment(freq_mask=8, time_mask=20, num_freq_masks=2, num_time_masks=2)
    g = torch.Generator().manual_seed(1)
    widths = []
    for _ in range(50):
        freq, _ = aug.masks(torch.zeros(64, 40, 101), generator=g)
        widths.append(freq.sum(dim=(-2, -1)))
    widths_t = torch.cat(widths)
    assert widths_t.max() <= 16  # two masks of at most 8 bins each
    single = SpecAugment(freq_mask=8, time_mask=0, num_freq_masks=1, num_time_masks=0)
    w = torch.cat([single.masks(torch.zeros(64, 40, 101), generator=g)[0].sum(dim=(-2, -1)) for _ in range(20)])
    assert w.min() == 0 and w.max() == 8  # uniform on [0, F], both ends reached
    feats = torch.randn(4, 40, 101) + 5
    aug.train()
    out = aug(feats)
    changed = out != feats
    assert changed.any()
    mean = feats.mean(dim=(-2, -1), keepdim=True).expand_as(feats)
    torch.testing.assert_close(out[changed], mean[changed])
    aug.eval()
    assert aug(feats) is feats
