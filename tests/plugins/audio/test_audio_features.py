"""Log-mel, the mel filterbank and the mel scales against librosa; SpecAugment mask widths and counts."""

from __future__ import annotations

# The reference is librosa (a test-only dependency, in the `dev` extra): an outside implementation, not a
# re-derivation by the same hands. librosa's "hann" window is scipy's periodic one, as ours.
import librosa
import numpy as np
import pytest
import torch

pytest.importorskip("soundfile")
from dltrain.plugins.audio import LogMelSpectrogram, SpecAugment, hz_to_mel, mel_filterbank, mel_to_hz

SCALES = [("htk", None), ("htk", "slaney"), ("slaney", None), ("slaney", "slaney")]


def _signal(sr: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(sr) / sr
    # Speech-like test signal: two tones, a chirp and noise, so every band has energy.
    return 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t) \
        + 0.1 * np.sin(2 * np.pi * (100 + 3000 * t) * t) + 0.05 * rng.standard_normal(sr)


def _librosa_mel(x: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int, scale: str, norm: str | None) -> np.ndarray:
    return librosa.feature.melspectrogram(y=x, sr=sr, n_fft=n_fft, hop_length=hop, win_length=n_fft, window="hann",
                                          center=True, pad_mode="reflect", power=2.0, n_mels=n_mels,
                                          htk=scale == "htk", norm=norm, dtype=np.float64)


@pytest.mark.parametrize("scale,norm", SCALES)
@pytest.mark.parametrize("sr,n_fft,hop,n_mels", [(16000, 400, 160, 40), (22050, 512, 128, 64)])
def test_logmel_matches_librosa(sr, n_fft, hop, n_mels, scale, norm):
    x = _signal(sr)
    ref_mel = _librosa_mel(x, sr, n_fft, hop, n_mels, scale, norm)
    ref_log = np.log(ref_mel + 1e-6)
    module = LogMelSpectrogram(sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels, mel_scale=scale, norm=norm)
    out = module(torch.tensor(x, dtype=torch.float32)[None])[0].double().numpy()
    assert out.shape == ref_log.shape == (n_mels, sr // hop + 1)
    # float32 features vs librosa in float64: relative error of the log-mel values (|value| >= 1 as the scale,
    # since log-mel crosses 0) and of the mel power.
    rel_log = np.abs(out - ref_log) / np.maximum(np.abs(ref_log), 1.0)
    assert rel_log.max() < 1e-4, rel_log.max()
    rel_mel = np.abs(np.exp(out) - 1e-6 - ref_mel) / ref_mel
    assert np.median(rel_mel) < 1e-5 and rel_mel.max() < 1e-3
    # Float64 input is computed in float64 (only the window and filterbank buffers are float32, so that the
    # module also runs on devices without float64): then every value matches closely.
    out64 = module(torch.tensor(x, dtype=torch.float64)[None])[0].numpy()
    assert (np.abs(out64 - ref_log) / np.maximum(np.abs(ref_log), 1.0)).max() < 2e-5


@pytest.mark.parametrize("scale,norm", SCALES)
def test_filterbank_and_mel_scale_match_librosa(scale, norm):
    for sr, n_fft, n_mels, f_min, f_max in [(22050, 512, 64, 0.0, None), (16000, 400, 40, 20.0, 7600.0)]:
        ours = mel_filterbank(n_fft // 2 + 1, n_mels, sr, f_min, f_max, scale=scale, norm=norm).numpy()
        ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max, htk=scale == "htk",
                                  norm=norm, dtype=np.float64).T
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    f = np.linspace(0, 11025, 301)
    mel = hz_to_mel(torch.tensor(f, dtype=torch.float64), scale).numpy()
    np.testing.assert_allclose(mel, librosa.hz_to_mel(f, htk=scale == "htk"), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mel_to_hz(torch.tensor(mel), scale).numpy(), librosa.mel_to_hz(mel, htk=scale == "htk"),
                               rtol=1e-12, atol=1e-9)


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


def _runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-D boolean tensor."""
    padded = torch.cat([torch.tensor([False]), row, torch.tensor([False])]).int()
    edges = padded.diff()
    starts, ends = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
    return [(int(s), int(e - s)) for s, e in zip(starts, ends)]


@pytest.mark.parametrize(
    "freq_mask,time_mask,max_time_fraction",
    [(8, 20, 1.0), ((3, 5), (10, 10), 1.0), (0, (0, 50), 0.2)],
    ids=["int-widths", "min-max-widths", "time-capped-at-20%"],
)
def test_specaugment_one_mask_has_the_documented_width_and_position_over_many_seeds(
        freq_mask, time_mask, max_time_fraction):
    # The docstring: widths uniform on [0, max] (an int) or [min, max] (a tuple), positions uniform where the
    # mask fits, time masks capped at max_time_fraction of the frames; one contiguous band per mask.
    n_freq, n_time = 40, 101
    aug = SpecAugment(freq_mask, time_mask, num_freq_masks=1, num_time_masks=1, max_time_fraction=max_time_fraction)
    f_lo, f_hi = (0, freq_mask) if isinstance(freq_mask, int) else freq_mask
    t_lo, t_hi = (0, time_mask) if isinstance(time_mask, int) else time_mask
    t_hi = min(t_hi, int(max_time_fraction * n_time))
    widths: dict[str, list[int]] = {"freq": [], "time": []}
    touches: dict[str, set[str]] = {"freq": set(), "time": set()}
    for seed in range(100):
        freq, time = aug.masks(torch.zeros(16, n_freq, n_time), generator=torch.Generator().manual_seed(seed))
        for kind, masks, size in (("freq", freq.reshape(16, n_freq), n_freq), ("time", time.reshape(16, n_time), n_time)):
            for row in masks:
                runs = _runs(row)
                assert len(runs) <= 1  # one mask: one contiguous band (none when its width is 0)
                width = runs[0][1] if runs else 0
                widths[kind].append(width)
                if runs:
                    touches[kind] |= {"start"} if runs[0][0] == 0 else set()
                    touches[kind] |= {"end"} if sum(runs[0]) == size else set()
    for kind, lo, hi in (("freq", f_lo, f_hi), ("time", t_lo, t_hi)):
        counts = np.bincount(widths[kind], minlength=hi + 1)
        assert counts[:lo].sum() == 0 and counts[hi + 1:].sum() == 0, (kind, counts)
        # uniform on [lo, hi]: 1600 draws (fixed seeds), every width within 35% of its expected count, 3 standard
        # deviations or more of a binomial count; an off-by-one range or a skewed draw falls outside
        expected = len(widths[kind]) / (hi - lo + 1)
        assert np.all(np.abs(counts[lo:hi + 1] - expected) < 0.35 * expected), (kind, counts[lo:hi + 1])
        if hi > 0:
            assert touches[kind] == {"start", "end"}  # every position where it fits, both ends included


@pytest.mark.parametrize("count", [1, 2, 3])
def test_specaugment_mask_counts_over_many_seeds(count):
    # `count` masks of width exactly 4 (they may overlap): at most `count` bands, 4..4*count bins in all, and
    # with many seeds every number of separate bands from 1 to `count` occurs.
    aug = SpecAugment(freq_mask=(4, 4), time_mask=(4, 4), num_freq_masks=count, num_time_masks=count)
    seen_bands = set()
    for seed in range(50):
        freq, time = aug.masks(torch.zeros(16, 40, 101), generator=torch.Generator().manual_seed(seed))
        for row in [*freq.reshape(16, 40), *time.reshape(16, 101)]:
            runs = _runs(row)
            assert 1 <= len(runs) <= count and 4 <= sum(n for _, n in runs) <= 4 * count
            seen_bands.add(len(runs))
    assert seen_bands == set(range(1, count + 1))
    # zero masks, or width 0: nothing masked
    for none in (SpecAugment(8, 20, 0, 0), SpecAugment(0, 0, 2, 2)):
        freq, time = none.masks(torch.zeros(4, 40, 101), generator=torch.Generator().manual_seed(0))
        assert not freq.any() and not time.any()
