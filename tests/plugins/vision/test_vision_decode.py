"""Decoding shard bytes: formats, modes -> channels, dtype, range, and the errors for bad images and labels."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
from PIL import Image

from dltrain.errors import DataError
from dltrain.plugins.vision import decode_image, encode_image, image_decoders, parse_label, to_channels

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG", "BMP", "TIFF", "GIF"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_formats_give_uint8_chw_with_requested_channels(fmt: str, channels: int) -> None:
    kw = {"lossless": True} if fmt == "WEBP" else {}
    data = _encode(Image.fromarray(RGB), fmt, **kw)
    img = decode_image(data, channels=channels)
    assert img.dtype == torch.uint8
    assert img.shape == (channels, 12, 10)
    assert img.is_contiguous()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_lossless_rgb_round_trip_is_exact(fmt: str) -> None:
    data = _encode(Image.fromarray(RGB), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert torch.equal(decode_image(data, channels=3), torch.from_numpy(RGB).permute(2, 0, 1))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "1", "CMYK", "I;16"])
def test_modes_convert_to_rgb_and_gray(mode: str) -> None:
    if mode == "I;16":
        pil = Image.fromarray(np.arange(120, dtype=np.uint16).reshape(12, 10) * 500)
    else:
        pil = Image.fromarray(RGB).convert(mode)
    data = _encode(pil, "JPEG" if mode == "CMYK" else "PNG")
    rgb = decode_image(data, channels=3)
    gray = decode_image(data, channels=1)
    assert rgb.shape == (3, 12, 10) and gray.shape == (1, 12, 10)
    assert rgb.dtype == gray.dtype == torch.uint8
    if mode == "L":  # gray -> RGB repeats the plane
        assert torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[0], gray[0])
    if mode == "I;16":  # 16-bit keeps its 8 most significant bits, full range
        assert int(rgb.max()) == (119 * 500) // 257


def test_gray_from_rgb_matches_pillow_luma() -> None:
    data = _encode(Image.fromarray(RGB), "PNG")
    ours = decode_image(data, channels=1)[0].int()
    pillow = torch.from_numpy(np.array(Image.fromarray(RGB).convert("L"))).int()
    assert (ours - pillow).abs().max() <= 1


def test_channels_none_keeps_the_files_channels() -> None:
    assert decode_image(_encode(Image.fromarray(RGB).convert("RGBA"), "PNG"), channels=None).shape[0] == 4
    assert decode_image(_encode(Image.fromarray(RGB).convert("L"), "PNG"), channels=None).shape[0] == 1


@pytest.mark.parametrize(
    "data", [b"", b"not an image at all", _encode(Image.fromarray(RGB), "JPEG")[:60]], ids=["empty", "junk", "truncated"]
)
def test_undecodable_image_raises_data_error(data: bytes) -> None:
    with pytest.raises(DataError, match="cannot decode image"):
        decode_image(data)


def test_to_channels_rejects_unconvertible_channel_counts() -> None:
    with pytest.raises(DataError, match="5 channels"):
        to_channels(torch.zeros(5, 4, 4, dtype=torch.uint8), 3)
    with pytest.raises(DataError, match="shape"):
        to_channels(torch.zeros(1, 1, 4, 4), 3)
    assert to_channels(torch.zeros(4, 4, dtype=torch.uint8), 3).shape == (3, 4, 4)
    rgba = to_channels(torch.zeros(3, 2, 2, dtype=torch.uint8), 4)
    assert rgba.shape == (4, 2, 2) and int(rgba[3].min()) == 255


def test_encode_image_round_trip() -> None:
    img = torch.from_numpy(RGB).permute(2, 0, 1)
    assert torch.equal(decode_image(encode_image(img, "png")), img)
    assert decode_image(encode_image(RGB[:, :, 0], "jpg"), channels=1).shape == (1, 12, 10)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(3, 3), (b"3", 3), (b" 7\n", 7), ("2", 2), (4.0, 4), ("5.0", 5), (np.int64(1), 1), (torch.tensor([6]), 6)],
)
def test_parse_label_converts_unambiguous_values(value: object, expected: int) -> None:
    assert parse_label(value, num_classes=10) == expected


@pytest.mark.parametrize(
    ("value", "match"),
    [(None, "no class label"), (b"cat", "not an integer"), (2.5, "not an integer"), (True, "boolean"),
     (10, "outside"), (-1, "outside"), (torch.tensor([1, 2]), "shape"), ([1], "type")],
)
def test_parse_label_rejects_bad_values(value: object, match: str) -> None:
    with pytest.raises(DataError, match=match):
        parse_label(value, num_classes=10)


def test_image_decoders_cover_formats_and_label() -> None:
    decoders = image_decoders(channels=1)
    assert {"jpg", "jpeg", "png", "webp", "cls"} <= set(decoders)
    assert decoders["png"](_encode(Image.fromarray(RGB), "PNG")).shape == (1, 12, 10)
    assert decoders["cls"](b"4") == 4
    import pickle

    assert pickle.loads(pickle.dumps(decoders["png"]))(_encode(Image.fromarray(RGB), "PNG")).shape[0] == 1
