"""Audio input-pipeline throughput: decode + resample + crop (per loader worker) and log-mel.

    python -c "from scripts.benchlib.audio import run; print(run(5.0))"
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import torch


def _clips(n: int = 64) -> list[bytes]:
    """FLAC clips of spoken digits at espeak's 22050 Hz (sines if espeak-ng is missing), about 0.6 s each."""
    import soundfile as sf

    try:
        from dltrain.plugins.audio.espeak import Espeak

        tts = Espeak()
        rate = tts.sample_rate
        words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
        waves = [tts.synthesize(words[i % 10], voice="en+m3", rate=120 + 7 * (i % 13)) for i in range(n)]
    except Exception:
        rate = 22050
        t = np.arange(int(0.6 * rate)) / rate
        waves = [(0.5 * np.sin(2 * np.pi * (200 + 10 * i) * t)).astype(np.float32) for i in range(n)]
    out = []
    for w in waves:
        buf = io.BytesIO()
        sf.write(buf, w, rate, format="FLAC", subtype="PCM_16")
        out.append(buf.getvalue())
    return out


def run(seconds: float = 5.0) -> dict[str, Any]:
    """Measure, on one CPU thread (as in one loader worker), for ``seconds`` each:

    - ``clips_per_s``: FLAC decode + resample 22050 -> 16000 Hz + random crop/pad to 1 s (the worker's job);
    - ``logmel_clips_per_s``: 40-band log-mel of 1 s clips in batches of 64 (the device transform, on CPU here);
    - ``end_to_end_clips_per_s``: both, one after the other, per clip.
    """
    from dltrain.plugins.audio import AudioTransform, LogMelSpectrogram, decode_field

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clips = _clips()
        transform = AudioTransform(sample_rate=16000, clip_seconds=1.0, training=True)
        logmel = LogMelSpectrogram(16000, n_mels=40)
        transform({"__key__": "warmup", "flac": decode_field(clips[0]), "cls": 0})  # filter design, imports

        n, start = 0, time.perf_counter()
        waves: list[torch.Tensor] = []
        while time.perf_counter() - start < seconds:
            wave = transform({"__key__": str(n), "flac": decode_field(clips[n % len(clips)]), "cls": 0})["waveform"]
            if len(waves) < 64:
                waves.append(wave)
            n += 1
        cpu_rate = n / (time.perf_counter() - start)

        batch = torch.stack(waves)
        with torch.no_grad():
            logmel(batch)
            m, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                logmel(batch)
                m += len(batch)
        mel_rate = m / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return {
        "clips_per_s": round(cpu_rate, 1),
        "logmel_clips_per_s": round(mel_rate, 1),
        "end_to_end_clips_per_s": round(1.0 / (1.0 / cpu_rate + 1.0 / mel_rate), 1),
        "clip_seconds": 1.0,
        "source_rate": 22050,
        "target_rate": 16000,
        "threads": 1,
    }


if __name__ == "__main__":
    print(run())
