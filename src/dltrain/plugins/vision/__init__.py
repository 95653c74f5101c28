"""The vision plugin: image decoding, torchvision transforms, MixUp/CutMix on the device, a classification task.

Needs the ``vision`` extra (``pip install 'dltrain[vision]'``: torchvision and Pillow).

Example:
    >>> import dltrain.plugins
    >>> vision = dltrain.plugins.get("vision")
    >>> train_tf = vision.transform("train", size=224, color_jitter=0.4)
    >>> task = vision.tasks["classification"]("resnet18", num_classes=10)
"""

from __future__ import annotations

from dltrain.plugins import Plugin, require

# Checked before anything else imports them, so a missing extra gives one clear message.
require("torchvision", plugin="vision", extra="vision")
require("PIL", plugin="vision", extra="vision")

from dltrain.plugins.metrics import CLASSIFICATION_METRICS  # noqa: E402
from dltrain.plugins.vision.decode import (  # noqa: E402
    IMAGE_EXTENSIONS,
    FieldDecoder,
    ImageDecodeError,
    decode_image,
    decode_label,
    encode_image,
    image_decoders,
    parse_label,
    to_channels,
)
from dltrain.plugins.vision.device import (  # noqa: E402
    DECODE_PLACES,
    DeviceDecode,
    EncodedJpegs,
    JpegBytesTransform,
    device_transform,
)
from dltrain.plugins.vision.mix import BatchMix, MixUpCutMix, one_hot_targets  # noqa: E402
from dltrain.plugins.vision.shards import find_images, write_image_shards  # noqa: E402
from dltrain.plugins.vision.task import ImageClassificationTask, accuracy, build_model, load_weights  # noqa: E402
from dltrain.plugins.vision.transforms import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageSampleTransform,
    collate,
    eval_transform,
    pipeline_transform,
    sample_transform,
    train_transform,
)

__all__ = [
    "DECODE_PLACES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "BatchMix",
    "DeviceDecode",
    "EncodedJpegs",
    "FieldDecoder",
    "ImageClassificationTask",
    "ImageDecodeError",
    "ImageSampleTransform",
    "JpegBytesTransform",
    "MixUpCutMix",
    "accuracy",
    "build_model",
    "collate",
    "decode_image",
    "decode_label",
    "device_transform",
    "encode_image",
    "eval_transform",
    "find_images",
    "image_decoders",
    "load_weights",
    "one_hot_targets",
    "parse_label",
    "pipeline_transform",
    "plugin",
    "sample_transform",
    "to_channels",
    "train_transform",
    "write_image_shards",
]

plugin = Plugin(
    name="vision",
    extra="vision",
    # Images are decoded by the transform (on the CPU with the channels it was given, or on the device with
    # decode="cuda"), so the workers' decoders leave them as bytes and only parse the label.
    decoders={"cls": FieldDecoder("label")},
    transform=sample_transform,
    collate=collate,
    device_transform=device_transform,
    tasks={"classification": ImageClassificationTask},
    metrics=CLASSIFICATION_METRICS,
    write_shards=write_image_shards,
)
