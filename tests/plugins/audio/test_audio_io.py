"""Decoding, channels, resampling, crop/pad, bad input, shards through the data layer."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

sf = pytest.importorskip("soundfile")
from dltrain.errors import DataError  # noqa: E402
from dltrain.plugins.audio import (  # noqa: E402
    Audio,
    AudioTransform,
    collate,
    crop_or_pad,
    decode_audio,
    decode_field,
    resample,
    select_channels,
)

FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS")}


def encode(wave: np.ndarray, rate: int, fmt: str) -> bytes:
    """``wave`` is ``[frames]`` or ``[frames, channels]``."""
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=FORMATS[fmt][0], subtype=FORMATS[fmt][1])
    return buf.getvalue()


def sine(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(rate * seconds)) / rate)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg"])
def test_decode_formats(fmt):
    x = sine(440, 16000)
    audio = decode_audio(encode(x, 16000, fmt))
    assert isinstance(audio, Audio) and audio.sample_rate == 16000
    assert audio.waveform.dtype == np.float32 and audio.waveform.shape[0] == 1
    assert abs(audio.waveform.shape[1] - len(x)) <= (0 if fmt != "ogg" else 2048)
    n = min(len(x), audio.waveform.shape[1])
    tol = 1e-3 if fmt != "ogg" else 0.1  # Vorbis is lossy
    assert np.abs(audio.waveform[0, :n] - x[:n]).max() < tol
    assert peak_hz(audio.waveform[0], 16000) == pytest.approx(440, abs=2)


def test_stereo_mixdown_and_channel_selection():
    left, right = sine(300, 8000), sine(1000, 8000, amp=0.25)
    audio = decode_audio(encode(np.stack([left, right], axis=1), 8000, "flac"))
    assert audio.waveform.shape == (2, 8000)
    mono = select_channels(audio.waveform, "mix")
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-4)
    np.testing.assert_allclose(select_channels(audio.waveform, 1), right, atol=1e-4)
    assert select_channels(audio.waveform, [1, 0]).shape == (2, 8000)
    with pytest.raises(DataError, match="channel 2 requested"):
        select_channels(audio.waveform, 2)
    # Through the transform: stereo where mono is expected is mixed down.
    out = AudioTransform(sample_rate=8000, clip_seconds=None)({"__key__": "k", "flac": audio, "cls": 1})
    wave, label = out["waveform"], out["label"]
    assert wave.shape == (8000,) and label == 1


@pytest.mark.parametrize("orig,new,freq", [(22050, 16000, 1000.0), (8000, 16000, 440.0), (44100, 16000, 3000.0)])
def test_resample_keeps_sine_frequency(orig, new, freq):
    x = sine(freq, orig)
    y = resample(x[None], orig, new)[0]
    assert len(y) == new
    assert peak_hz(y, new) == pytest.approx(freq, abs=2)
    # Amplitude kept in the middle (away from the filter's edge effects).
    assert np.abs(y[new // 4 : 3 * new // 4]).max() == pytest.approx(0.5, rel=0.02)


def test_resample_filter_matches_scipy_default():
    from scipy.signal import resample_poly

    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    np.testing.assert_allclose(resample(x, 22050, 16000), resample_poly(x, 320, 441), rtol=1e-5, atol=1e-6)


def test_resample_removes_content_above_new_nyquist():
    y = resample(sine(7000, 22050)[None], 22050, 8000)[0]  # 7 kHz cannot exist at 8 kHz: filtered, not aliased
    assert np.abs(y[1000:-1000]).max() < 0.01


def test_crop_or_pad():
    x = np.arange(10.0)
    np.testing.assert_array_equal(crop_or_pad(x, 4, random=False), [3, 4, 5, 6])
    np.testing.assert_array_equal(crop_or_pad(x, 14, random=False), [0, 0, *range(10), 0, 0])
    assert crop_or_pad(x, 10, random=True) is x
    rng = np.random.default_rng(0)
    starts = {int(crop_or_pad(x, 4, random=True, generator=rng)[0]) for _ in range(200)}
    assert starts == set(range(7))  # every crop position can happen
    offsets = {int(np.argmax(crop_or_pad(x + 1, 13, random=True, generator=rng) > 0)) for _ in range(200)}
    assert offsets == set(range(4))
    assert crop_or_pad(np.ones((2, 10)), 6, random=False).shape == (2, 6)


def test_transform_resamples_crops_and_labels():
    data = encode(sine(500, 22050, seconds=1.5), 22050, "wav")
    train = AudioTransform(sample_rate=16000, clip_seconds=1.0, training=True)
    evalt = AudioTransform(sample_rate=16000, clip_seconds=1.0, training=False)
    sample = {"__key__": "k", "__url__": "u.tar", "wav": data, "cls": b"3"}
    out = evalt(sample)
    wave, label = out["waveform"], out["label"]
    assert wave.shape == (16000,) and wave.dtype == torch.float32 and label == 3
    assert peak_hz(wave.numpy(), 16000) == pytest.approx(500, abs=2)
    torch.testing.assert_close(evalt(sample)["waveform"], wave)  # centre crop is deterministic
    torch.manual_seed(0)
    crops = {tuple(train(sample)["waveform"][:4].tolist()) for _ in range(5)}
    assert len(crops) > 1  # random crop in training
    w, y = collate([evalt(sample), evalt(sample)])
    assert w.shape == (2, 16000) and y.tolist() == [3, 3]
    unlabelled = AudioTransform(sample_rate=16000, clip_seconds=1.0, training=False, label_key=None)
    w, y = collate([unlabelled(sample), unlabelled(sample)])  # unlabelled: label -1, as in every domain
    assert w.shape == (2, 16000) and y.tolist() == [-1, -1]
    with pytest.raises(DataError, match="label -1"):
        collate([{"waveform": w[0]}, {"waveform": w[1]}])


def test_bad_inputs_name_shard_and_key():
    sample = {"__key__": "spk1_seven_01", "__url__": "train-000000.tar", "cls": 7}
    t = AudioTransform(sample_rate=16000)
    with pytest.raises(DataError, match="empty audio clip") as err:
        t({**sample, "wav": encode(np.zeros(0, np.float32), 16000, "wav")})
    assert err.value.url == "train-000000.tar" and err.value.key == "spk1_seven_01"
    with pytest.raises(DataError, match="cannot decode audio") as err:
        t({**sample, "flac": b"fLaC\x00\x00garbage" * 4})
    assert err.value.key == "spk1_seven_01"
    with pytest.raises(DataError, match=r"no audio field.*mp3"):
        t({**sample, "mp3": b"ID3..."})
    with pytest.raises(DataError, match="cannot decode audio"):
        decode_audio(b"not audio at all")
    with pytest.raises(DataError, match="unsupported audio format 'AIFF'"):
        buf = io.BytesIO()
        sf.write(buf, sine(440, 8000), 8000, format="AIFF")
        decode_audio(buf.getvalue())
    # As a loader decoder it raises a plain ValueError, which the data layer wraps with shard and key.
    with pytest.raises(ValueError, match="cannot decode audio"):
        decode_field(b"garbage")
    with pytest.raises(DataError, match="not an integer"):
        t({**sample, "cls": b"seven", "wav": encode(sine(440, 16000), 16000, "wav")})


def _write_set(tmp_path, bad: bool):
    from dltrain.data import write_shards

    samples = []
    for i in range(12):
        rate = [16000, 22050, 8000][i % 3]
        wave = sine(200 + 100 * i, rate, seconds=0.5 + 0.1 * (i % 4))
        if i % 4 == 1:
            wave = np.stack([wave, wave], axis=1)  # stereo
        samples.append({"__key__": f"s{i:02d}", ["wav", "flac", "ogg"][i % 3]: encode(wave, rate, ["wav", "flac", "ogg"][i % 3]),
                        "cls": i % 3})
    if bad:
        samples.insert(3, {"__key__": "corrupt", "flac": b"fLaC-corrupt", "cls": 0})
        samples.insert(7, {"__key__": "empty", "wav": encode(np.zeros(0, np.float32), 16000, "wav"), "cls": 1})
    return write_shards(samples, str(tmp_path / "a-%06d.tar"), max_count=5)


def test_streaming_with_bad_samples(tmp_path):
    pytest.importorskip("webdataset")
    import dltrain.plugins

    audio = dltrain.plugins.get("audio")
    urls = _write_set(tmp_path, bad=True)

    def dataset(on_error):
        return audio.dataset(urls, "val", batch_size=4, options={"sample_rate": 16000, "clip_seconds": 0.5},
                             on_error=on_error)

    with pytest.raises(DataError) as err:
        list(dataset("raise"))
    assert err.value.key == "corrupt" and err.value.url is not None and "a-000000.tar" in err.value.url
    loader = dataset("skip").loader(num_workers=0)
    with pytest.warns(UserWarning, match="skipped 2 bad samples"):
        batches = [b for b in loader if b is not None]
    assert loader.skipped == 2
    waves = torch.cat([w for w, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert waves.shape == (12, 8000) and sorted(labels.tolist()) == sorted(i % 3 for i in range(12))


def test_write_audio_shards_from_class_folders(tmp_path):
    import json

    import dltrain.plugins

    audio = dltrain.plugins.get("audio")
    for c, name in enumerate(["no", "yes"]):
        (tmp_path / "clips" / name).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "clips" / name / f"take.{i}.wav").write_bytes(encode(sine(300 + 100 * c, 8000), 8000, "wav"))
    (tmp_path / "clips" / "yes" / "notes.txt").write_text("not audio")
    urls = audio.write_shards(tmp_path / "clips", str(tmp_path / "out" / "s-%06d.tar"), max_count=4)
    assert len(urls) == 2 and json.loads((tmp_path / "out" / "classes.json").read_text()) == ["no", "yes"]
    ds = audio.dataset(urls, "val", batch_size=6, options={"sample_rate": 16000, "clip_seconds": 1.0})
    (waves, labels), = list(ds)
    assert waves.shape == (6, 16000) and labels.tolist() == [0, 0, 0, 1, 1, 1]
