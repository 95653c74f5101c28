"""Decoding image bytes from shards into ``uint8`` tensors with a fixed number of channels.

torchvision's native decoders (libjpeg-turbo, libpng, libwebp) are used first: on this project's reference
machine they were 1.2-4x faster than Pillow for JPEG and WebP and on par for PNG (see
``scripts/benchlib/vision.py``). Pillow is the fallback for the formats torchvision does not read (BMP, TIFF, ...).
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.io import ImageReadMode
from torchvision.io import decode_image as _tv_decode_image
from torchvision.transforms.v2 import functional as TF

from dltrain.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "FieldDecoder", "ImageDecodeError", "decode_image", "decode_label", "encode_image", "image_decoders", "parse_label",
           "to_channels"]

#: Shard field extensions treated as images (the lower-case file suffix, without the dot).
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")

_READ_MODE = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB, 4: ImageReadMode.RGB_ALPHA, None: ImageReadMode.UNCHANGED}
_PIL_MODE = {1: "L", 3: "RGB", 4: "RGBA"}


def to_channels(image: Tensor, channels: int | None) -> Tensor:
    """Convert a ``(C, H, W)`` image to ``channels`` channels where the conversion is unambiguous.

    1 -> 3 repeats the gray plane, 3 -> 1 uses ITU-R 601-2 luma (as Pillow does), an alpha plane (2 or 4
    channels) is dropped when not asked for. ``channels=None`` keeps the image as it is.

    Args:
        image: ``(C, H, W)`` tensor.
        channels: 1, 3, 4 or ``None``.

    Raises:
        DataError: the image is not ``(C, H, W)`` or has a channel count that cannot be converted (e.g. 5).

    Example:
        >>> to_channels(torch.zeros(1, 8, 8, dtype=torch.uint8), 3).shape
        torch.Size([3, 8, 8])
    """
    if image.ndim == 2:  # a bare (H, W) plane is a gray image
        image = image.unsqueeze(0)
    if image.ndim != 3:
        raise DataError(f"expected an image of shape (C, H, W), got shape {tuple(image.shape)}")
    have = image.shape[0]
    if channels is None or have == channels:
        return image
    if have not in (1, 2, 3, 4):
        raise DataError(
            f"image has {have} channels; only 1 (gray), 2 (gray+alpha), 3 (RGB) and 4 (RGBA) can be converted to "
            f"the {channels} channels the model expects"
        )
    color = image[:1] if have <= 2 else image[:3]  # drop alpha: the model never sees it
    if channels == 1:
        return color if color.shape[0] == 1 else TF.rgb_to_grayscale(color, num_output_channels=1)
    if channels == 3:
        return color.expand(3, -1, -1).contiguous() if color.shape[0] == 1 else color
    if channels == 4:
        rgb = color.expand(3, -1, -1) if color.shape[0] == 1 else color
        opaque = torch.iinfo(image.dtype).max if not image.is_floating_point() else 1.0
        alpha = image[-1:] if have in (2, 4) else torch.full_like(image[:1], opaque)
        return torch.cat([rgb, alpha])
    raise DataError(f"channels must be 1, 3, 4 or None, not {channels!r}")


def _to_uint8(image: Tensor) -> Tensor:
    if image.dtype == torch.uint8:
        return image
    if image.dtype == torch.uint16:  # 16-bit PNG: keep the 8 most significant bits
        return torch.div(image.to(torch.int32), 257, rounding_mode="floor").to(torch.uint8)
    return TF.to_dtype(image, torch.uint8, scale=True)


def _pil_decode(data: bytes, channels: int | None) -> Tensor:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, do not silently eat memory
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            im: Image.Image = opened
            if channels is not None:
                im = im.convert(_PIL_MODE[channels])
            elif im.mode not in ("L", "LA", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
            array = np.array(im, dtype=np.uint8, copy=True)
    tensor = torch.from_numpy(array)
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def decode_image(data: bytes | bytearray | memoryview, channels: int | None = 3) -> Tensor:
    """Decode JPEG, PNG, WebP (or GIF, BMP, TIFF via Pillow) bytes into a ``uint8`` ``(C, H, W)`` tensor.

    Gray, gray+alpha, palette, RGBA, CMYK and 16-bit images are converted to ``channels`` channels.

    Args:
        data: the encoded image.
        channels: 1 (gray), 3 (RGB), 4 (RGBA), or ``None`` to keep the file's own channels.

    Raises:
        DataError: the bytes are not an image that can be decoded (the data layer adds shard and key).

    Example:
        >>> img = decode_image(encode_image(torch.zeros(1, 4, 4, dtype=torch.uint8)), channels=3)
        >>> img.shape, img.dtype
        (torch.Size([3, 4, 4]), torch.uint8)
    """
    if channels not in _READ_MODE:
        raise DataError(f"channels must be 1, 3, 4 or None, not {channels!r}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DataError(f"expected encoded image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise DataError("cannot decode image: the field is empty (0 bytes)")
    # bytearray copies once (cheap next to decoding) and gives torch a writable buffer, avoiding its warning.
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        with warnings.catch_warnings():
            # torchvision >= 0.29 warns on every call that its image I/O moves to torchcodec; it still works and is
            # the fastest decoder here. Silenced per call (~3 us) so it does not flood logs from every worker.
            warnings.simplefilter("ignore", DeprecationWarning)
            image = _tv_decode_image(buffer, mode=_READ_MODE[channels])
    except RuntimeError as tv_err:
        try:
            image = _pil_decode(bytes(data), channels)
        except Exception as pil_err:
            head = bytes(data[:8]).hex(" ")
            raise DataError(
                f"cannot decode image ({len(data)} bytes starting {head}): {str(tv_err).splitlines()[-1][-200:]}; "
                f"Pillow: {pil_err}. Supported formats: JPEG, PNG, WebP, GIF, BMP, TIFF"
            ) from pil_err
    # torchvision ignores GRAY for WebP/GIF and returns uint16 for 16-bit PNG: normalise both here.
    # torchvision returns a channels-last view; make it contiguous once here rather than in every later op.
    return to_channels(_to_uint8(image), channels).contiguous()


def encode_image(image: Tensor | np.ndarray, format: str = "png", quality: int = 95) -> bytes:
    r"""Encode a ``uint8`` image (``(C, H, W)`` tensor, or ``(H, W)``/``(H, W, C)`` array) as PNG, JPEG or WebP.

    Args:
        image: the pixels; float arrays in ``[0, 1]`` are scaled to ``uint8``.
        format: ``"png"``, ``"jpg"``/``"jpeg"`` or ``"webp"``.
        quality: JPEG/WebP quality.

    Example:
        >>> encode_image(np.zeros((8, 8), dtype=np.uint8))[:4]
        b'\x89PNG'
    """
    from PIL import Image

    if isinstance(image, Tensor):
        t = image.detach().cpu()
        array = (t.permute(1, 2, 0) if t.ndim == 3 else t).numpy()
    else:
        array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[format.lower()]
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **({"quality": quality} if fmt != "PNG" else {}))
    return out.getvalue()


def parse_label(value: Any, num_classes: int | None = None) -> int:
    r"""Turn a stored class label into an ``int``, converting only where it is unambiguous.

    Accepts ints, integral floats (``3.0``), numpy/torch scalars, and text or bytes such as ``b"3"``.

    Args:
        value: the label as found in the sample.
        num_classes: when given, the label must lie in ``[0, num_classes)``.

    Raises:
        DataError: the label is missing, not an integer, or out of range.

    Example:
        >>> parse_label(b" 7\n", num_classes=10)
        7
    """
    if value is None:
        raise DataError("the sample has no class label")
    raw = value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"class label {bytes(raw)[:40]!r} is not text; store it as an integer") from None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise DataError(
                    f"class label {text[:40]!r} is not an integer; store class indices (see classes.json from "
                    "scripts/make_image_shards.py)"
                ) from None
    if isinstance(value, (Tensor, np.ndarray)):
        count = value.size if isinstance(value, np.ndarray) else value.numel()
        if count != 1:
            raise DataError(f"class label has shape {tuple(value.shape)}; expected a single integer")
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        raise DataError(f"class label {value!r} is a boolean, not a class index")
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value) or not float(value).is_integer():
            raise DataError(f"class label {value!r} is not an integer")
        value = int(value)
    if not isinstance(value, (int, np.integer)):
        raise DataError(f"class label {raw!r} has type {type(raw).__name__}; expected an integer")
    label = int(value)
    if label < 0 or (num_classes is not None and label >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else "non-negative"
        raise DataError(f"class label {label} is outside the valid range {bound}")
    return label


def decode_label(data: bytes) -> int:
    """Decoder for a ``cls`` shard field (an integer written as text)."""
    return parse_label(data)


class ImageDecodeError(ValueError):
    """Raised by the plugin's field decoders; the data layer wraps it in a ``DataError`` naming shard and key.

    Not a ``DataError`` itself: the data layer passes one from a decoder through unchanged, which would lose both.
    """


class FieldDecoder:
    """A shard field decoder (``bytes -> value``) that reports bad data as :class:`ImageDecodeError`.

    A class rather than a closure so that it pickles into loader workers.

    Example:
        >>> FieldDecoder("png")(encode_image(torch.zeros(3, 4, 4, dtype=torch.uint8))).shape
        torch.Size([3, 4, 4])
        >>> FieldDecoder("label")(b"3")
        3
    """

    def __init__(self, kind: str, channels: int | None = 3) -> None:
        self.kind = kind
        self.channels = channels
        self.__name__ = f"vision {kind} decoder"  # shows up in the data layer's error message

    def __call__(self, data: bytes) -> Any:
        """The decoded field: an image tensor or an ``int`` label.

        Raises:
            ImageDecodeError: the bytes are not a valid image or label.
        """
        try:
            return decode_label(data) if self.kind == "label" else decode_image(data, self.channels)
        except DataError as err:
            raise ImageDecodeError(err.reason) from err

    def __repr__(self) -> str:
        return f"FieldDecoder({self.kind!r}, channels={self.channels})"


def image_decoders(channels: int | None = 3) -> dict[str, Any]:
    """Decoders for every image extension plus ``cls``, for ``StreamingDataset(decode=...)``.

    Args:
        channels: channels of the decoded images (see :func:`decode_image`).

    Example:
        >>> sorted(image_decoders(channels=1))[:3]
        ['bmp', 'cls', 'gif']
    """
    decoders: dict[str, Any] = dict.fromkeys(IMAGE_EXTENSIONS, FieldDecoder("image", channels))
    decoders["cls"] = FieldDecoder("label")
    return decoders
