"""Decode + augment throughput of the vision plugin's CPU path (what each loader worker does).

``run(seconds, workers)`` generates JPEG and PNG images (256x256-ish photos-like content, and 32x32), then each
worker process decodes and runs the training transform (RandomResizedCrop 224 / 32, flip, ColorJitter,
Normalize) for ``seconds`` and reports images/s. Decoders compared: torchvision.io (used by the plugin) and Pillow.

    python -c "from scripts.benchlib.vision import run; print(run(3.0, 1))"
"""

from __future__ import annotations

import io
import multiprocessing as mp
import time
from typing import Any

import numpy as np


def _make_images() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out: dict[str, bytes] = {}
    for size in (256, 32):
        # Smooth random content: compresses like a photo rather than like noise.
        base = rng.integers(0, 256, (size // 8 + 1, size // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)
        for fmt, kw in (("jpg", {"format": "JPEG", "quality": 90}), ("png", {"format": "PNG"})):
            buf = io.BytesIO()
            image.save(buf, **kw)
            out[f"{fmt}{size}"] = buf.getvalue()
    return out


def _pil_decode(data: bytes) -> Any:
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        array = np.array(im.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _worker(args: tuple[str, str, float]) -> float:
    import torch

    torch.set_num_threads(1)  # as in a DataLoader worker
    name, decoder, seconds = args
    from dltrain.plugins.vision import decode_image, train_transform

    data = _make_images()[name]
    size = 224 if name.endswith("256") else 32
    transform = train_transform(size, color_jitter=0.4)
    decode = decode_image if decoder == "torchvision" else _pil_decode
    n = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        transform({"__key__": "x", "png": decode(data), "cls": 0})
        n += 1
    return n / elapsed


def run(seconds: float = 5.0, workers: int = 1) -> dict:
    """Images/s per worker (mean over ``workers`` processes) for each image kind and decoder.

    Args:
        seconds: measuring time per image kind and decoder (the whole run takes about 8x this).
        workers: worker processes run at once (each reports its own rate).

    Returns:
        ``{"workers": n, "seconds": s, "images_per_s_per_worker": {"jpg256/torchvision": ..., ...}}``.
    """
    rates: dict[str, float] = {}
    ctx = mp.get_context("spawn")  # a clean interpreter per worker, as with spawn-started loader workers
    with ctx.Pool(workers) as pool:
        for name in ("jpg256", "png256", "jpg32", "png32"):
            for decoder in ("torchvision", "pillow"):
                per_worker = pool.map(_worker, [(name, decoder, seconds)] * workers)
                rates[f"{name}/{decoder}"] = round(float(np.mean(per_worker)), 1)
    return {"workers": workers, "seconds": seconds, "images_per_s_per_worker": rates}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0,
                         int(sys.argv[2]) if len(sys.argv) > 2 else 1), indent=1))
