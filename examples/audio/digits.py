"""Synthesise the spoken-digit data set of the keyword-spotting example with espeak-ng, into FLAC shards.

Every clip is one digit word (zero..nine) spoken by an espeak-ng voice: an English accent (``en``, ``en-us``,
``en-gb-scotland``, ...) with a voice variant (``m1``..``m8``, ``f1``..``f5``, ``klatt``, ``adam``, ...), at a
random speed, pitch and intonation range, with a random gain and a little white noise. The *variants* are
split between train, validation and test, so the test set is spoken only by voices the model never heard.

Run directly to build the shards without training: ``python examples/audio/digits.py --data-dir runs/kws/data``.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ACCENTS = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
# Effect voices (robots, whispers, growls) that do not sound like a person talking.
EFFECT_VARIANTS = {"Demonic", "UniRobot", "anikaRobot", "croak", "whisper", "whisperf", "AnxiousAndy", "Tweaky"}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SynthConfig:
    """What to synthesise. Changing any field makes the example rebuild its shards.

    Args:
        takes: clips per (variant, digit) for train, val and test; each take draws accent, speed and pitch.
        max_variants: use at most this many variants (spread over the list), for a tiny data set in tests.
        seed: seed of every random draw.
    """

    takes: tuple[int, int, int] = (3, 2, 3)
    max_variants: int | None = None
    seed: int = 0


def split_variants(max_variants: int | None = None) -> dict[str, list[str]]:
    """The voice variants of each split: every 5th variant is held out for test, every 10th (offset 3) for val."""
    from dltrain.plugins.audio.espeak import list_variants

    variants = [v for v in list_variants() if v not in EFFECT_VARIANTS]
    if max_variants is not None and max_variants < len(variants):
        variants = [variants[round(i)] for i in np.linspace(0, len(variants) - 1, max_variants)]
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for i, v in enumerate(variants):
        out["test" if i % 5 == 0 else "val" if i % 10 == 3 else "train"].append(v)
    return out


def _jobs(split: str, variants: list[str], takes: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    jobs = []
    for variant in variants:
        for digit, word in enumerate(DIGITS):
            for take in range(takes):
                accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
                jobs.append({
                    "key": f"{variant}_{accent}_{word}_{take}".replace(" ", "-").replace(".", "-"),
                    "text": word,
                    "label": digit,
                    "voice": f"{accent}+{variant}",
                    "rate": int(rng.integers(110, 231)),
                    "pitch": int(rng.integers(20, 81)),
                    "range": int(rng.integers(20, 91)),
                    "gain": float(rng.uniform(0.3, 1.0)),
                    "snr_db": float(rng.uniform(25, 45)),
                    "noise_seed": int(rng.integers(2**31)),
                })
    return jobs


def _synthesise(job: dict[str, Any]) -> dict[str, Any]:
    import soundfile as sf

    from dltrain.plugins.audio.espeak import Espeak

    tts = Espeak()
    wave = tts.synthesize(job["text"], voice=job["voice"], rate=job["rate"], pitch=job["pitch"],
                          pitch_range=job["range"])
    peak = float(np.abs(wave).max()) or 1.0
    wave = wave / peak * job["gain"]
    rms = float(np.sqrt(np.mean(wave**2))) or 1e-3
    noise = np.random.default_rng(job["noise_seed"]).standard_normal(len(wave)).astype(np.float32)
    wave = np.clip(wave + noise * rms * 10 ** (-job["snr_db"] / 20), -1, 1)
    buf = io.BytesIO()
    # Stored at espeak's own rate (22050 Hz): the loader resamples to the task's rate, as with real data.
    sf.write(buf, wave, tts.sample_rate, format="FLAC", subtype="PCM_16")
    return {"__key__": job["key"], "flac": buf.getvalue(), "cls": job["label"]}


def build(data_dir: str | Path, config: SynthConfig = SynthConfig(), verbose: bool = True) -> dict[str, list[str]]:
    """Synthesise train/val/test shards into ``data_dir`` unless shards for the same config are there.

    One process: espeak-ng makes a clip in about 5 ms, so worker processes (each importing torch) would cost
    more than they save at this size.

    Returns:
        ``{"train": [shard paths], "val": [...], "test": [...]}``.
    """
    from dltrain.data import write_shards

    data_dir = Path(data_dir)
    marker = data_dir / "digits.json"
    wanted = {"config": asdict(config), "version": 1}
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("config") == json.loads(json.dumps(wanted["config"])) and done.get("version") == 1:
            return done["shards"]
    data_dir.mkdir(parents=True, exist_ok=True)
    variants = split_variants(config.max_variants)
    shards: dict[str, list[str]] = {}
    start = time.perf_counter()
    for split, takes in zip(SPLITS, config.takes):
        jobs = _jobs(split, variants[split], takes, config.seed)
        for old in data_dir.glob(f"{split}-*"):
            old.unlink()
        shards[split] = write_shards(map(_synthesise, jobs), str(data_dir / f"{split}-%06d.tar"), max_count=500)
        if verbose:
            print(f"synthesised {len(jobs)} {split} clips ({len(variants[split])} voice variants x 10 digits x "
                  f"{takes}) into {len(shards[split])} shard(s)", flush=True)
    (data_dir / "classes.json").write_text(json.dumps(DIGITS))
    marker.write_text(json.dumps({**wanted, "shards": shards, "variants": variants}, indent=1))
    if verbose:
        print(f"synthesis took {time.perf_counter() - start:.1f}s; held-out test voices: "
              f"{', '.join(variants['test'])}", flush=True)
    return shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="runs/kws/data")  # train_kws.py's <root-dir>/data
    parser.add_argument("--takes", type=int, nargs=3, default=list(SynthConfig.takes), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--max-variants", type=int, default=None)
    args = parser.parse_args()
    build(args.data_dir, SynthConfig(tuple(args.takes), args.max_variants))


if __name__ == "__main__":
    main()
