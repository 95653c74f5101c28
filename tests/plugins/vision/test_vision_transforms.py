"""Per-sample train/eval pipelines, collate, and bad-input errors raised from the sample transform."""

from __future__ import annotations

import pickle

import pytest
import torch

pytest.importorskip("torchvision")

from dltrain.errors import DataError
from dltrain.plugins.vision import collate, encode_image, eval_transform, train_transform


def _sample(channels: int = 3, h: int = 40, w: int = 50, label: object = 3, key: str = "png") -> dict:
    g = torch.Generator().manual_seed(0)
    return {"__key__": "k0", key: torch.randint(0, 256, (channels, h, w), dtype=torch.uint8, generator=g), "cls": label}


@pytest.mark.parametrize("channels", [1, 3])
def test_train_transform_shape_dtype_and_range(channels: int) -> None:
    t = train_transform(32, channels=channels, color_jitter=0.4, num_classes=10)
    out = t(_sample(channels=3))
    img, label = out["image"], out["label"]
    assert img.shape == (channels, 32, 32) and img.dtype == torch.float32 and label == 3
    assert -3.0 < float(img.min()) < float(img.max()) < 3.0  # normalized with ImageNet-like statistics


def test_eval_transform_is_deterministic_and_centered() -> None:
    t = eval_transform(24, resize=24)
    a = t(_sample(h=30, w=60))["image"]
    b = t(_sample(h=30, w=60))["image"]
    assert a.shape == (3, 24, 24) and torch.equal(a, b)


def test_unnormalized_pipeline_keeps_uint8() -> None:
    img = train_transform(16, normalize=False)(_sample())["image"]
    assert img.dtype == torch.uint8 and img.shape == (3, 16, 16)
    img = eval_transform(16, normalize=False)(_sample())["image"]
    assert img.dtype == torch.uint8


def test_train_transform_is_deterministic_under_a_seed() -> None:
    t = train_transform(32, color_jitter=(0.4, 0.4, 0.4, 0.1))
    torch.manual_seed(1)
    a = [t(_sample())["image"] for _ in range(3)]
    torch.manual_seed(1)
    b = [t(_sample())["image"] for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])  # but random from one sample to the next


def test_transform_decodes_raw_bytes_and_converts_arrays() -> None:
    t = eval_transform(8, resize=8, channels=1)
    raw = {"__key__": "a", "jpg": encode_image(torch.zeros(3, 8, 8, dtype=torch.uint8), "jpg"), "cls": b"2"}
    out = t(raw)
    img, label = out["image"], out["label"]
    assert img.shape == (1, 8, 8) and label == 2
    hwc = {"png": torch.zeros(8, 8, 3, dtype=torch.uint8).numpy(), "cls": 0}
    assert t(hwc)["image"].shape == (1, 8, 8)


def test_transform_pickles_for_worker_processes() -> None:
    t = pickle.loads(pickle.dumps(train_transform(16, color_jitter=0.2)))
    assert t(_sample())["image"].shape == (3, 16, 16)


@pytest.mark.parametrize(
    ("sample", "match"),
    [
        ({"__key__": "a", "cls": 1}, "no image field"),
        ({"__key__": "a", "png": b"\x89PNG broken"}, "cannot decode image"),
        ({"__key__": "a", "png": torch.zeros(3, 8, 8, dtype=torch.uint8)}, "no class label"),
        ({"__key__": "a", "png": torch.zeros(3, 8, 8, dtype=torch.uint8), "cls": "dog"}, "not an integer"),
        ({"__key__": "a", "png": torch.zeros(3, 8, 8, dtype=torch.uint8), "cls": 12}, r"outside the valid range \[0, 10\)"),
        ({"__key__": "a", "png": torch.zeros(6, 8, 8, dtype=torch.uint8), "cls": 1}, "6 channels"),
    ],
    ids=["no-image", "undecodable", "no-label", "text-label", "label-out-of-range", "six-channels"],
)
def test_bad_samples_raise_data_error(sample: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        eval_transform(8, num_classes=10)(sample)


def test_unlabelled_samples_get_minus_one() -> None:
    assert eval_transform(8, label_key=None)({"png": torch.zeros(3, 8, 8, dtype=torch.uint8)})["label"] == -1


def test_collate_stacks_and_rejects_mixed_sizes() -> None:
    x, y = collate([(torch.zeros(3, 4, 4), 1), (torch.ones(3, 4, 4), 2)])
    assert x.shape == (2, 3, 4, 4) and y.dtype == torch.long and y.tolist() == [1, 2]
    xd, yd = collate([{"image": torch.zeros(3, 4, 4), "label": 1}, {"image": torch.ones(3, 4, 4), "label": 2}])
    assert torch.equal(xd, x) and torch.equal(yd, y)
    with pytest.raises(DataError, match="different shapes"):
        collate([(torch.zeros(3, 4, 4), 1), (torch.zeros(3, 5, 4), 2)])
