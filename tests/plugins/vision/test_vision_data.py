"""The vision plugin with the streaming data layer: folder -> shards -> batches, and bad samples named by
shard and key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchvision")
from PIL import Image

from dltrain.data import StreamingDataset, write_shards
from dltrain.errors import DataError
from dltrain.plugins import get
from dltrain.plugins.vision import collate, encode_image, eval_transform, image_decoders

REPO = Path(__file__).resolve().parents[3]


def _loader_samples(urls: list[str], on_error: str = "raise", workers: int = 0) -> list:
    ds = StreamingDataset(urls, batch_size=1, decode=image_decoders(channels=3),
                          map=eval_transform(8, resize=8, num_classes=10), collate_fn=collate, shuffle=False,
                          training=False, on_error=on_error)  # type: ignore[arg-type]
    return list(ds.loader(num_workers=workers)) if workers else list(ds)


def _good(key: str, label: int = 1) -> dict:
    return {"__key__": key, "png": encode_image(torch.full((1, 8, 8), 100, dtype=torch.uint8)), "cls": label}


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"__key__": "bad", "png": b"\x89PNG\r\n\x1a\n broken"}, "cannot decode image"),
        ({"__key__": "bad", "png": encode_image(torch.zeros(1, 8, 8, dtype=torch.uint8))}, "no class label"),
        ({**_good("bad"), "cls": "dog"}, "not an integer"),
        ({**_good("bad"), "cls": 12}, "outside the valid range"),
    ],
    ids=["undecodable", "no-label", "text-label", "label-out-of-range"],
)
def test_bad_sample_error_names_shard_and_key(tmp_path: Path, bad: dict, match: str) -> None:
    urls = write_shards([_good("ok0"), bad, _good("ok1")], str(tmp_path / "s-%06d.tar"))
    with pytest.raises(DataError, match=match) as info:
        _loader_samples(urls)
    assert info.value.key == "bad" and info.value.url is not None and "s-000000.tar" in info.value.url
    assert "'bad'" in str(info.value) and "s-000000.tar" in str(info.value)
    assert len([b for b in _loader_samples(urls, on_error="skip") if b is not None]) == 2  # the bad one is skipped


def test_bad_sample_from_a_worker_process(tmp_path: Path) -> None:
    urls = write_shards([_good("ok0"), {**_good("bad"), "cls": "dog"}], str(tmp_path / "w-%06d.tar"))
    with pytest.raises(DataError, match="not an integer") as info:
        _loader_samples(urls, workers=1)
    assert info.value.key == "bad" and info.value.url is not None


def test_image_folder_to_shards_to_batches(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for cls, mode in (("cat", "RGB"), ("dog", "L"), ("emu", "RGBA")):
        (root / cls / "sub").mkdir(parents=True)
        for i in range(3):
            Image.new(mode, (12 + i, 9)).save(root / cls / ("sub" if i else ".") / f"im.{i}.png")
    Image.new("RGB", (9, 9)).save(root / "cat" / "im.0.jpg")  # same stem, other format: a separate sample
    (root / "cat" / "notes.txt").write_text("ignored")
    out = tmp_path / "shards"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_image_shards.py"), str(root), str(out), "--max-count", "4"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog", "emu"]
    urls = sorted(str(p) for p in out.glob("train-*.tar"))
    assert len(urls) == 3 and (out / "train.index.json").is_file()
    batches = _loader_samples(urls)
    labels = sorted(int(y) for _, y in batches)
    assert labels == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(x.shape == (1, 3, 8, 8) for x, _ in batches)


def test_plugin_fields() -> None:
    vision = get("vision")
    assert vision.name == "vision" and vision.extra == "vision"
    assert set(vision.decoders) == {"cls"}  # images are decoded by the transform (CPU) or on the device
    assert vision.collate is not None and vision.write_shards is not None
    assert "classification" in vision.tasks
    assert vision.device_transform("train", num_classes=10, mixup_alpha=0.2) is not None
    assert vision.device_transform("val", num_classes=10, mixup_alpha=0.2) is None  # evaluation is never mixed
    assert vision.metrics["accuracy"](10, top_k=5).top_k == 5
