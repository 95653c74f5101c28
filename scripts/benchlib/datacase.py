"""Case 3 (data loaders over the same shards) and the shards every data case reads (``prepare``)."""

from __future__ import annotations

import functools
import gc
import io
import json
import math
import os
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from benchlib.common import _PERF

# Case 3's regimes: the samples' payload field, and how it is decoded (the same function in every pipeline).
# png: 32x32 PNGs (case 3 as it was); raw: 2 KiB of bytes, not decoded (the loader is the bottleneck); jpeg:
# ImageNet-like 256 px JPEGs (the decode is the bottleneck).
REGIMES = ("png", "raw", "jpeg")
FIELDS = {"png": "png", "raw": "bin", "jpeg": "jpg"}


def decode_png(data: bytes) -> Any:
    """Image bytes (PNG, JPEG) -> float tensor [3, H, W] in [0, 1] (PIL decode; the same function in every
    pipeline)."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def decoder_of(regime: str) -> Any:
    """The payload decoder of a regime (None: the bytes as they are)."""
    return None if regime == "raw" else decode_png


def stream_pair(sample: dict[str, Any]) -> tuple[Any, int, str]:
    """(image, class, key): every pipeline's batches carry their keys, for the exactly-once check."""
    return sample["png"], sample["cls"], sample["__key__"]


def stream_triple(field: str, sample: dict[str, Any]) -> tuple[Any, int, str]:
    """(payload, class, key) of a dltrain sample (`stream_pair` for any payload field; bound with partial)."""
    return sample[field], sample["cls"], sample["__key__"]


def tar_samples(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard written by `prepare`, as ``{"key", "png", "cls"}`` (raw PNG bytes, int class)."""
    sample: dict[str, Any] = {}
    with tarfile.open(url) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = member.name.split(".", 1)
            if sample and sample["key"] != key:
                yield sample
                sample = {}
            f = tar.extractfile(member)
            assert f is not None
            sample["key"] = key
            sample[ext] = int(f.read()) if ext == "cls" else f.read()
    if sample:
        yield sample


def epoch_check(keys: list[str], expected: set[str]) -> dict[str, Any]:
    """How far one epoch's keys are from every expected sample exactly once."""
    counts = Counter(keys)
    dups = sum(c - 1 for c in counts.values() if c > 1)
    missing = len(expected - counts.keys())
    unknown = len(counts.keys() - expected)
    return {"delivered": len(keys), "distinct": len(counts), "duplicates": dups, "missing": missing,
            "unknown": unknown, "exactly_once": dups == 0 and missing == 0 and unknown == 0}


class MapStyleImages:
    """Map-style dataset over the shards' samples (raw bytes kept in memory), decoded like the others."""

    def __init__(self, urls: list[str]) -> None:
        self.items = [(s["png"], s["cls"], s["key"]) for url in urls for s in tar_samples(url)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, int, str]:
        png, cls, key = self.items[i]
        return decode_png(png), cls, key


class DataRunner:
    """Case 3: StreamingDataset vs webdataset.WebLoader vs map-style DataLoader, same shards, same decode.

    Batches are ``(images, classes, keys)``; each measured epoch's keys are checked against the shards' (every
    sample exactly once?). The peer loaders (benchlib.peers) subclass this with their own `_loader`.
    """

    def __init__(self, variant: str, cfg: dict[str, Any], urls: list[str]) -> None:
        self.variant, self.cfg, self.urls = variant, cfg, urls
        self.regime = str(cfg.get("regime", "png"))
        self.field = FIELDS[self.regime]
        self.map_ds = MapStyleImages(urls) if variant == "mapstyle" else None
        self.keys = {s["key"] for url in urls for s in tar_samples(url)}

    def _loader(self, workers: int, rep: int) -> Any:
        from torch.utils.data import DataLoader, default_collate

        b = self.cfg["batch"]
        if self.variant == "mixture":
            # The same shards as three sources (every third shard), weighted by their sizes: the same samples and
            # decode per epoch as "streaming", through Mixture's plan (issue 16: >= 0.95x of one dataset).
            from dltrain.data import Mixture, StreamingDataset

            sources = [StreamingDataset(self.urls[i::3], batch_size=b, decode={"png": decode_png}, map=stream_pair,
                                        shuffle=True, shuffle_buffer=1000, training=False) for i in range(3)]
            mix = Mixture(sources, weights=[src.num_samples for src in sources], seed=rep)
            return mix.loader(num_workers=workers)
        if self.variant in ("streaming", "streaming-pipe", "pipe-no-read-ahead"):
            from dltrain.data import StreamingDataset, default_index_path

            # streaming-pipe: the same shards through `pipe:cat`, read forward (no seeking), as remote or
            # compressed shards are; persistent workers read each next epoch's first window ahead.
            urls = self.urls if self.variant == "streaming" else [f"pipe:cat {u}" for u in self.urls]
            ahead = self.variant != "pipe-no-read-ahead"
            decode = decoder_of(self.regime)
            ds = StreamingDataset(urls, batch_size=b, decode={self.field: decode} if decode else None,
                                  map=functools.partial(stream_triple, self.field), shuffle=True,
                                  shuffle_buffer=1000, seed=rep, index=default_index_path(self.urls),
                                  training=False)  # every sample, as the peers deliver: exactly once is checkable
            return ds.loader(num_workers=workers, read_ahead=ahead)
        if self.variant == "webloader":
            import webdataset as wds

            ds = (
                wds.WebDataset(self.urls, shardshuffle=100, seed=rep, empty_check=False)
                .shuffle(1000)
                .decode(wds.handle_extension("png", decode_png))
                .to_tuple("png", "cls", "__key__")
                .batched(b, collation_fn=default_collate)
            )
            return wds.WebLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                                 prefetch_factor=2 if workers else None)
        assert self.map_ds is not None
        return DataLoader(self.map_ds, batch_size=b, shuffle=True, num_workers=workers,
                          persistent_workers=workers > 0, prefetch_factor=2 if workers else None)

    def run(self, rep: int, args: dict[str, Any]) -> dict[str, Any]:
        import torch

        torch.manual_seed(rep)
        workers = int(args["workers"])
        gc.collect()
        t0 = _PERF()
        loader = self._loader(workers, rep)
        epochs = []
        prev_end = t0
        # The warm-up run (imports, first use) reads a few batches only.
        limit = 4 if args.get("warmup") else None
        checks = []
        for epoch in range(1 if limit else self.cfg["epochs"]):
            if hasattr(loader, "set_epoch"):  # LitData's and mosaic's loaders count epochs per iter() themselves
                loader.set_epoch(epoch)
            first = None
            n = 0
            seen: list[str] = []
            for i, (_x, y, keys) in enumerate(loader):
                if first is None:
                    first = _PERF()
                n += len(y)
                seen.extend(keys)
                if limit and i + 1 >= limit:
                    break
            end = _PERF()
            if first is None:
                raise RuntimeError(f"{self.variant}: epoch {epoch} yielded no batch")
            epochs.append({"first": first - prev_end, "time": end - prev_end, "samples": n})
            if not limit:
                checks.append(epoch_check(seen, self.keys))
            # The end of a training epoch (validation, a checkpoint): the same pause for every pipeline, not timed.
            time.sleep(self.cfg.get("pause_s", 0.0))
            prev_end = _PERF()
        del loader
        gc.collect()
        last = epochs[-1]
        return {
            "first_batch_s": epochs[0]["first"],
            "gap_ms": 1000 * last["first"],
            "samples_per_s": last["samples"] / last["time"],
            "samples": [e["samples"] for e in epochs],
            "epoch_s": [e["time"] for e in epochs],
            "epochs_checked": checks,
        }


def prepare(spec: dict[str, Any]) -> None:
    """Write the shards of cases 3 and 5 (dltrain.data.write_shards); print their URLs as one JSON line."""
    import numpy as np
    from PIL import Image

    from dltrain.data import write_shards

    out: dict[str, Any] = {}
    t = _PERF()
    if "data" in spec:
        c = spec["data"]
        rng = np.random.default_rng(0)
        per = math.ceil(c["samples"] / c["shards"])

        def images() -> Any:
            # 256 distinct noise images, cycled: decode cost per sample is what matters, not uniqueness.
            pngs = []
            for _ in range(256):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
                pngs.append(buf.getvalue())
            for i in range(c["samples"]):
                yield {"__key__": f"img{i:07d}", "png": pngs[i % 256], "cls": i % 10}

        d = os.path.join(spec["tmp"], "images")
        out["data"] = write_shards(images(), os.path.join(d, "train-%06d.tar"), max_count=per)
        for regime, rc in c.get("regimes", {}).items():
            out[f"data-{regime}"] = write_regime(regime, rc, os.path.join(spec["tmp"], regime))
    if "resume" in spec:
        c = spec["resume"]
        per = math.ceil(c["samples"] / c["shards"])
        rng = np.random.default_rng(1)
        xs = rng.standard_normal((c["samples"], 8)).astype(np.float32)

        def tiny() -> Any:
            for i in range(c["samples"]):
                yield {"__key__": f"s{i:07d}", "npy": xs[i], "cls": i % 10}

        d = os.path.join(spec["tmp"], "tiny")
        out["resume"] = write_shards(tiny(), os.path.join(d, "tiny-%06d.tar"), max_count=per)
    out["prepare_s"] = _PERF() - t
    if "data" in spec:
        out["tar_diag"] = tar_diagnostics(out["data"][0])
    print("BENCH_RESULT " + json.dumps(out), flush=True)


def write_regime(regime: str, rc: dict[str, Any], folder: str) -> list[str]:
    """The shards of case 3's other regimes: ``raw`` (``rc["bytes"]`` random bytes per sample) or ``jpeg``
    (``rc["size"]`` px square JPEGs, quality 90, of smooth random images: about the bytes and decode time of a
    resized ImageNet photo, unlike noise, which JPEG compresses badly). 256 distinct payloads, cycled."""
    import numpy as np
    from PIL import Image

    from dltrain.data import write_shards

    rng = np.random.default_rng(2)
    payloads = []
    for _ in range(256 if regime == "raw" else 64):
        if regime == "raw":
            payloads.append(rng.integers(0, 256, int(rc["bytes"]), dtype=np.uint8).tobytes())
            continue
        size = int(rc["size"])
        small = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize((size, size),
                                                                                        Image.Resampling.BICUBIC)
        grain = rng.normal(0, 12, (size, size, 3))  # texture, so that the JPEG is not trivially small
        pixels = np.clip(np.asarray(small, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        payloads.append(buf.getvalue())
    field = FIELDS[regime]
    samples = ({"__key__": f"{regime}{i:07d}", field: payloads[i % len(payloads)], "cls": i % 10}
               for i in range(int(rc["samples"])))
    return write_shards(samples, os.path.join(folder, f"{regime}-%06d.tar"),
                        max_count=math.ceil(int(rc["samples"]) / int(rc["shards"])))


def tar_diagnostics(shard: str) -> dict[str, Any]:
    """How costly the tar format of a dltrain-written shard is to read, vs the same samples with integer mtimes.

    webdataset's TarWriter stamps members with a float mtime; the tar module then writes a PAX extended header
    before every member. Readers (webdataset's and dltrain's, both on ``tarfile``) parse two headers per member.
    """
    import tarfile

    from webdataset import tariterators
    from webdataset.writer import TarWriter

    with tarfile.open(shard) as tar:
        members = tar.getmembers()
        pax = sum(1 for m in members if m.pax_headers)
        samples: dict[str, dict[str, bytes]] = {}
        for m in members:
            key, ext = m.name.split(".", 1)
            f = tar.extractfile(m)
            assert f is not None
            samples.setdefault(key, {"__key__": key})[ext] = f.read()  # type: ignore[assignment]
    alt = shard + ".intmtime.tar"
    with TarWriter(alt, mtime=int(time.time())) as w:
        for sample in samples.values():
            w.write(sample)

    def parse_us(path: str) -> float:
        best = float("inf")
        for _ in range(3):
            t = _PERF()
            with open(path, "rb") as f:
                n = sum(1 for _ in tariterators.tar_file_iterator(f))
            best = min(best, (_PERF() - t) / max(n, 1))
        return 1e6 * best

    out = {"members": len(members), "pax_members": pax, "bytes": os.path.getsize(shard),
           "bytes_int_mtime": os.path.getsize(alt), "parse_us": parse_us(shard), "parse_us_int_mtime": parse_us(alt)}
    os.remove(alt)
    return out
