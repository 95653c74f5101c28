"""The names that the ``>>>`` examples of src/dltrain may use without defining them, and the files they may read.

An example shows how to call one thing; building a task and its data in every docstring would bury that. So,
as Lightning's docs do, examples may use these (CONTRIBUTING.md lists them):

- ``dltrain``, ``torch``;
- ``task``: a small `dltrain.Task` (``task.net`` is a ``Linear(8, 1)``) that regresses ``y`` on ``x``;
- ``train_loader``, ``val_loader``, ``test_loader``: DataLoaders of ``(x, y)`` batches for it (``x``: 8 floats);
- ``flac_bytes``: one second of a 440 Hz tone at 16 kHz, as the bytes of a FLAC file.

and each module's examples run in a fresh temporary folder holding:

- ``data/train-{000000..000006}.tar`` (+ ``data/train.index.json``): 7 shards of 10 samples, fields ``npy`` (8
  float32) and ``cls`` (0-9);
- ``data/images-{000000..000001}.tar``: 2 shards of 8 PNG images (16x16 RGB), fields ``png`` and ``cls``;
- ``data/audio-{000000..000001}.tar``: 2 shards of 4 FLAC clips (1 s at 16 kHz), fields ``flac`` and ``cls``;
- ``images/train/<class>/<n>.png``: an image folder (2 classes of 4), ``audio/train/<class>/<n>.flac`` likewise.

Files are written only for the modules whose examples mention them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import dltrain


class _Regression(dltrain.Task):
    """``task`` of the examples: y = sum(x) with a linear layer."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test/loss", torch.nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _loader(n: int, seed: int, shuffle: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=16, shuffle=shuffle)


def _flac(seconds: float = 1.0, rate: int = 16000, hz: float = 440.0) -> bytes:
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    soundfile.write(buf, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate, format="FLAC")
    return buf.getvalue()


def _png(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def namespace() -> dict[str, Any]:
    """The extra globals of every example."""
    torch.manual_seed(0)
    return {"dltrain": dltrain, "torch": torch, "task": _Regression(), "train_loader": _loader(64, 0, True),
            "val_loader": _loader(32, 1), "test_loader": _loader(32, 2), "flac_bytes": _flac()}


def write_files(folder: Path, source: str) -> None:
    """Write the example files that ``source`` (the examples' text) mentions into ``folder``."""
    from dltrain.data import write_shards

    if "data/train-" in source or "data/train.index" in source:
        rng = np.random.default_rng(0)
        write_shards(({"__key__": f"s{i:04d}", "npy": rng.standard_normal(8).astype(np.float32), "cls": i % 10}
                      for i in range(70)), str(folder / "data/train-%06d.tar"), max_count=10)
    if "data/images-" in source:
        write_shards(({"__key__": f"img{i:04d}", "png": _png(i), "cls": i % 2} for i in range(16)),
                     str(folder / "data/images-%06d.tar"), max_count=8)
    if "data/audio-" in source:
        clip = _flac()
        write_shards(({"__key__": f"clip{i:04d}", "flac": clip, "cls": i % 2} for i in range(8)),
                     str(folder / "data/audio-%06d.tar"), max_count=4)
    if "images/train" in source:
        for i in range(8):
            path = folder / "images/train" / ("cat", "dog")[i % 2] / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_png(i))
    if "audio/train" in source:
        clip = _flac()
        for i in range(8):
            path = folder / "audio/train" / ("yes", "no")[i % 2] / f"{i}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(clip)
