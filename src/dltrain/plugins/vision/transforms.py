"""Per-sample CPU transforms (run in the loader workers) and the batch collate for image classification.

A sample transform takes the decoded shard sample (a dict) and returns the sample dict
``{"image": float (C, H, W) tensor of fixed size, "label": int}`` (the plugin contract of
`dltrain.data.domain`). Workers only decode, crop, flip and jitter; batch-level augmentation (MixUp/CutMix) runs
on the device, see :mod:`dltrain.plugins.vision.mix`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2

from dltrain.data.domain import check_stage
from dltrain.errors import ConfigurationError, DataError
from dltrain.plugins.vision.decode import IMAGE_EXTENSIONS, decode_image, parse_label, to_channels
from dltrain.plugins.vision.device import DECODE_PLACES, EncodedJpegs, JpegBytesTransform

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageSampleTransform", "collate", "eval_transform", "pipeline_transform",
           "sample_transform", "train_transform"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

ColorJitterArg = float | tuple[float, float, float, float] | None


def _mean_std(
    channels: int | None, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[list[float], list[float]]:
    if mean is not None and std is not None:
        return list(mean), list(std)
    if channels == 1:  # the ImageNet statistics of the luma plane
        return [0.449] if mean is None else list(mean), [0.226] if std is None else list(std)
    return list(IMAGENET_MEAN) if mean is None else list(mean), list(IMAGENET_STD) if std is None else list(std)


class ImageSampleTransform:
    """Sample dict -> ``{"image", "label"}``: picks the image and label fields, checks them, runs ``pipeline``.

    A top-level class (not a closure) so it pickles into loader worker processes.

    Args:
        pipeline: a transform on a ``uint8`` ``(C, H, W)`` tensor (e.g. a ``torchvision.transforms.v2.Compose``).
        channels: channels the model expects; images are converted where unambiguous (see ``to_channels``).
        num_classes: when given, labels outside ``[0, num_classes)`` raise ``DataError``.
        image_keys: sample fields searched, in order, for the image.
        label_key: sample field holding the class index (``None`` for unlabelled data: the label is ``-1``).

    Example:
        >>> t = ImageSampleTransform(v2.Resize(8), channels=3)
        >>> out = t({"png": torch.zeros(1, 16, 16, dtype=torch.uint8), "cls": 2})
        >>> out["image"].shape, out["label"]
        (torch.Size([3, 8, 8]), 2)
    """

    def __init__(
        self,
        pipeline: Callable[[Tensor], Tensor],
        *,
        channels: int | None = 3,
        num_classes: int | None = None,
        image_keys: Sequence[str] = IMAGE_EXTENSIONS,
        label_key: str | None = "cls",
    ) -> None:
        self.pipeline = pipeline
        self.channels = channels
        self.num_classes = num_classes
        self.image_keys = tuple(image_keys)
        self.label_key = label_key

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """``{"image", "label"}`` from a sample dict, the image transformed.

        Raises:
            DataError: no image field, a bad image, or a bad label (naming the shard and key).
        """
        try:
            image, label = self._apply(sample)
            return {"image": image, "label": label}
        except DataError as err:
            if err.url is None and err.key is None and ("__key__" in sample or "__url__" in sample):
                # Say where: the data layer passes a DataError from map through as it is.
                raise DataError(err.reason, url=sample.get("__url__"), key=sample.get("__key__")) from err
            raise

    def _apply(self, sample: Mapping[str, Any]) -> tuple[Tensor, int]:
        image = next((sample[k] for k in self.image_keys if k in sample), None)
        if image is None:
            fields = sorted(k for k in sample if not k.startswith("__"))
            raise DataError(f"the sample has no image field (looked for {', '.join(self.image_keys)}; it has {fields})")
        if isinstance(image, (bytes, bytearray, memoryview)):  # the loader was given no decoder: decode here
            image = decode_image(image, self.channels)
        elif not isinstance(image, Tensor):
            try:  # a PIL image or a numpy array from a user's own decoder
                image = v2.functional.pil_to_tensor(image) if hasattr(image, "getbands") else torch.as_tensor(image)
            except Exception as err:
                raise DataError(f"the image field holds a {type(image).__name__}, not an image") from err
            if image.ndim == 3 and image.shape[-1] in (1, 2, 3, 4) and image.shape[0] not in (1, 2, 3, 4):
                image = image.permute(2, 0, 1)  # (H, W, C) array -> (C, H, W)
        image = to_channels(image, self.channels)
        if self.label_key is None:
            label = -1
        else:
            if self.label_key not in sample:
                raise DataError(f"the sample has no class label field {self.label_key!r}")
            label = parse_label(sample[self.label_key], self.num_classes)
        return self.pipeline(image), label


def _mode(interpolation: str | InterpolationMode) -> InterpolationMode:
    # torchvision < 0.27 accepts only the enum, not its name.
    return interpolation if isinstance(interpolation, InterpolationMode) else InterpolationMode(interpolation.lower())


def _color_jitter(color_jitter: ColorJitterArg, channels: int | None) -> list[Any]:
    if not color_jitter:
        return []
    if isinstance(color_jitter, (int, float)):
        b = c = s = float(color_jitter)
        h = 0.0
    else:
        b, c, s, h = color_jitter
    if channels == 1:  # saturation and hue mean nothing on a gray plane
        s, h = 0.0, 0.0
    return [v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)]


def train_transform(
    size: int | tuple[int, int] = 224,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    color_jitter: ColorJitterArg = None,
    normalize: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int | None = 3,
    num_classes: int | None = None,
    interpolation: str = "bilinear",
    image_keys: Sequence[str] = IMAGE_EXTENSIONS,
    label_key: str | None = "cls",
) -> ImageSampleTransform:
    """The usual training pipeline: RandomResizedCrop, horizontal flip, optional ColorJitter, Normalize.

    Args:
        size: output size (square if an int).
        scale: RandomResizedCrop's range of the crop's area, as a fraction of the image's.
        ratio: RandomResizedCrop's range of the crop's aspect ratio.
        hflip: probability of a horizontal flip (0 for digits and text, where a flip changes the class).
        color_jitter: brightness/contrast/saturation strength, or a (b, c, s, hue) tuple; ``None`` turns it off.
        normalize: convert to float and normalize with ``mean``/``std`` (``False`` keeps ``uint8``).
        mean: per-channel means; ImageNet's by default.
        std: per-channel standard deviations; ImageNet's by default.
        channels: channels the model expects.
        num_classes: checks labels against the number of classes.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        image_keys: the fields that may hold the image (see `ImageSampleTransform`).
        label_key: the field holding the label (see `ImageSampleTransform`).

    Example:
        >>> t = train_transform(32, scale=(0.5, 1.0), hflip=0.0, channels=1)
        >>> t({"png": torch.zeros(1, 40, 40, dtype=torch.uint8), "cls": 0})["image"].shape
        torch.Size([1, 32, 32])
    """
    steps: list[Any] = [
        v2.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=_mode(interpolation), antialias=True)
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    steps += _color_jitter(color_jitter, channels)  # on uint8: cheaper than on float
    if normalize:
        m, s = _mean_std(channels, mean, std)
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(m, s)]
    return ImageSampleTransform(
        v2.Compose(steps), channels=channels, num_classes=num_classes, image_keys=image_keys, label_key=label_key
    )


def eval_transform(
    size: int | tuple[int, int] = 224,
    *,
    resize: int | None = None,
    normalize: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int | None = 3,
    num_classes: int | None = None,
    interpolation: str = "bilinear",
    image_keys: Sequence[str] = IMAGE_EXTENSIONS,
    label_key: str | None = "cls",
) -> ImageSampleTransform:
    """The usual evaluation pipeline: Resize (shorter side) + CenterCrop, Normalize. Deterministic.

    Args:
        size: output size (square if an int).
        resize: shorter side before the center crop; default ``size / 0.875`` (256 for 224).
        normalize: as in `train_transform`.
        mean: as in `train_transform`.
        std: as in `train_transform`.
        channels: as in `train_transform`.
        num_classes: as in `train_transform`.
        interpolation: as in `train_transform`.
        image_keys: as in `train_transform`.
        label_key: as in `train_transform`.

    Example:
        >>> t = eval_transform(32, resize=32, channels=3)
        >>> t({"jpg": torch.zeros(3, 48, 64, dtype=torch.uint8), "cls": 1})["image"].shape
        torch.Size([3, 32, 32])
    """
    crop = size if isinstance(size, int) else min(size)
    steps: list[Any] = [
        v2.Resize(resize if resize is not None else round(crop / 0.875), interpolation=_mode(interpolation),
                  antialias=True),
        v2.CenterCrop(size),
    ]
    if normalize:
        m, s = _mean_std(channels, mean, std)
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(m, s)]
    return ImageSampleTransform(
        v2.Compose(steps), channels=channels, num_classes=num_classes, image_keys=image_keys, label_key=label_key
    )


def sample_transform(stage: str, *, decode: str = "cpu", **options: Any) -> ImageSampleTransform | JpegBytesTransform:
    """The plugin's ``transform(stage, **options)``.

    :func:`pipeline_transform` (decode and transform in the workers), or with ``decode="cuda"`` a
    `JpegBytesTransform` (the workers only read the JPEG bytes; the plugin's ``device_transform(stage,
    decode="cuda", **the same options)`` decodes and transforms them on the device).

    Example:
        >>> t = sample_transform("val", size=8, channels=1)
        >>> t({"png": torch.zeros(1, 12, 12, dtype=torch.uint8), "cls": 3})["image"].shape
        torch.Size([1, 8, 8])
    """
    if decode not in DECODE_PLACES:
        raise ConfigurationError(f"decode must be one of {', '.join(DECODE_PLACES)}, not {decode!r}")
    if decode == "cuda":
        keys = {k: options[k] for k in ("num_classes", "image_keys", "label_key") if k in options}
        return JpegBytesTransform(**keys)
    return pipeline_transform(stage, **options)


def pipeline_transform(
    stage: str,
    *,
    size: int | tuple[int, int] = 224,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    color_jitter: ColorJitterArg = None,
    resize: int | None = None,
    **common: Any,
) -> ImageSampleTransform:
    """:func:`train_transform` for ``"train"``, else :func:`eval_transform`.

    One set of options serves every stage: the augmentation options (``scale``, ``ratio``, ``hflip``,
    ``color_jitter``) only act in training, ``resize`` only in evaluation; ``common`` (``normalize``, ``mean``,
    ``std``, ``channels``, ``num_classes``, ``interpolation``, ``image_keys``, ``label_key``) goes to both.
    """
    if check_stage(stage) == "train":
        return train_transform(size, scale=scale, ratio=ratio, hflip=hflip, color_jitter=color_jitter, **common)
    return eval_transform(size, resize=resize, **common)


def collate(samples: list[Mapping[str, Any]] | list[tuple[Tensor, int]]) -> tuple[Any, Tensor]:
    """Stack ``{"image", "label"}`` samples (or pairs) into ``(images (B, C, H, W), labels (B,) int64)``.

    ``{"jpeg", "label"}`` samples (``decode="cuda"``) become ``(EncodedJpegs, labels)``.

    Example:
        >>> x, y = collate([{"image": torch.zeros(3, 4, 4), "label": 1}, {"image": torch.ones(3, 4, 4), "label": 2}])
        >>> x.shape, y.tolist()
        (torch.Size([2, 3, 4, 4]), [1, 2])
    """
    if not samples:
        raise DataError("cannot collate an empty batch")
    if isinstance(samples[0], Mapping) and "jpeg" in samples[0]:
        encoded = [s["jpeg"] for s in samples]  # type: ignore[call-overload]
        return EncodedJpegs(encoded), torch.tensor([int(s["label"]) for s in samples],  # type: ignore[call-overload]
                                                   dtype=torch.long)
    pairs = [(s["image"], s["label"]) if isinstance(s, Mapping) else s for s in samples]
    images = [p[0] for p in pairs]
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise DataError(
            f"images in one batch have different shapes {sorted(shapes)[:4]}; use a transform with a fixed output "
            "size (train_transform/eval_transform crop to `size`)"
        )
    return torch.stack(images), torch.tensor([int(p[1]) for p in pairs], dtype=torch.long)
