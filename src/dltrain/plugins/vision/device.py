"""Work the vision plugin does on the device: JPEG decoding (``decode="cuda"``) and MixUp/CutMix.

With ``decode="cuda"`` the loader workers only read the JPEG bytes; ``collate`` keeps a batch of them on the CPU
(`EncodedJpegs`, which the batch transfer leaves alone, as ``decode_jpeg`` wants its input there), and
`DeviceDecode` decodes the whole batch with ``torchvision.io.decode_jpeg(..., device=...)`` on the device the
labels were moved to (nvJPEG on CUDA), then runs the same crop/flip/normalize pipeline as the CPU path, image by
image since the decoded sizes differ. On a CPU-only run the same code decodes on the CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.io import decode_jpeg
from typing_extensions import override

from dltrain.data.domain import check_stage
from dltrain.errors import ConfigurationError, DataError
from dltrain.plugins.vision.decode import _READ_MODE, IMAGE_EXTENSIONS, parse_label, to_channels
from dltrain.plugins.vision.mix import BatchMix, MixUpCutMix

__all__ = ["DECODE_PLACES", "DeviceDecode", "EncodedJpegs", "JpegBytesTransform", "device_transform"]

#: Where images are decoded: ``"cpu"`` in the loader workers, ``"cuda"`` on the device after the transfer.
DECODE_PLACES: tuple[str, ...] = ("cpu", "cuda")

_JPEG_MAGIC = b"\xff\xd8\xff"


class EncodedJpegs:
    """A batch of JPEG files as 1-D ``uint8`` CPU tensors.

    Deliberately not a tensor, list or dataclass, and without a ``to`` method: the batch transfer moves only
    those, and ``decode_jpeg`` reads its input from the CPU whatever device it decodes on.

    Example:
        >>> from dltrain.plugins.vision.decode import encode_image
        >>> file = encode_image(torch.zeros(3, 8, 8, dtype=torch.uint8), "jpeg")
        >>> jpeg = torch.frombuffer(bytearray(file), dtype=torch.uint8)
        >>> EncodedJpegs([jpeg, jpeg])  # doctest: +ELLIPSIS
        EncodedJpegs(2 images, ... bytes)
    """

    def __init__(self, data: list[Tensor]) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"EncodedJpegs({len(self.data)} images, {sum(int(d.numel()) for d in self.data)} bytes)"


class JpegBytesTransform:
    """Sample dict -> ``{"jpeg": 1-D uint8 tensor of the file, "label": int}``: the CPU half of ``decode="cuda"``.

    Args:
        num_classes: as in `dltrain.plugins.vision.ImageSampleTransform`.
        image_keys: as in `dltrain.plugins.vision.ImageSampleTransform`.
        label_key: as in `dltrain.plugins.vision.ImageSampleTransform`.

    Example:
        >>> from dltrain.plugins.vision.decode import encode_image
        >>> file = encode_image(torch.zeros(3, 8, 8, dtype=torch.uint8), "jpeg")
        >>> sample = JpegBytesTransform(num_classes=10)({"jpg": file, "cls": b"2"})
        >>> sample["jpeg"].dtype, sample["label"]
        (torch.uint8, 2)
    """

    def __init__(self, *, num_classes: int | None = None, image_keys: Sequence[str] = IMAGE_EXTENSIONS,
                 label_key: str | None = "cls") -> None:
        self.num_classes = num_classes
        self.image_keys = tuple(image_keys)
        self.label_key = label_key

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """``{"jpeg": bytes, "label"}``: the JPEG bytes kept for the GPU decoder, the label checked."""
        where = {"url": sample.get("__url__"), "key": sample.get("__key__")}
        data = next((sample[k] for k in self.image_keys if k in sample), None)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DataError("decode='cuda' needs the image field as JPEG bytes; found "
                            f"{'no image field' if data is None else type(data).__name__}", **where)
        if bytes(data[:3]) != _JPEG_MAGIC:
            raise DataError(f"decode='cuda' decodes JPEG only; this image starts {bytes(data[:8]).hex(' ')} "
                            "(use decode='cpu' for other formats)", **where)
        if self.label_key is None:
            label = -1
        elif self.label_key not in sample:
            raise DataError(f"the sample has no class label field {self.label_key!r}", **where)
        else:
            try:
                label = parse_label(sample[self.label_key], self.num_classes)
            except DataError as err:
                raise DataError(err.reason, **where) from err
        return {"jpeg": torch.frombuffer(bytearray(data), dtype=torch.uint8), "label": label}


class DeviceDecode(nn.Module):
    """``(EncodedJpegs, labels)`` -> ``(images (B, C, H, W), labels)``, decoded on the labels' device.

    Args:
        pipeline: the per-image transform after decoding (the CPU path's crop/flip/normalize pipeline).
        channels: 1, 3 or ``None`` (the file's own).

    Example:
        >>> from dltrain.plugins.vision.decode import encode_image
        >>> file = encode_image(torch.zeros(3, 8, 8, dtype=torch.uint8), "jpeg")
        >>> sample = JpegBytesTransform()({"jpg": file, "cls": 1})
        >>> batch = (EncodedJpegs([sample["jpeg"]] * 4), torch.tensor([sample["label"]] * 4))  # labels on the CPU
        >>> images, labels = DeviceDecode(pipeline=torch.nn.Identity())(batch)
        >>> images.shape, images.device.type
        (torch.Size([4, 3, 8, 8]), 'cpu')
    """

    def __init__(self, pipeline: Any, channels: int | None = 3) -> None:
        super().__init__()
        if channels not in (1, 3, None):
            raise ConfigurationError(f"decode='cuda' decodes to 1 or 3 channels (or None), not {channels!r}")
        self.pipeline = pipeline
        self.channels = channels

    @override
    def forward(self, batch: tuple[EncodedJpegs, Tensor]) -> tuple[Tensor, Tensor]:
        encoded, labels = batch
        with warnings.catch_warnings():
            # torchvision >= 0.29 warns on every call that its image I/O moves to torchcodec (as in decode.py).
            warnings.simplefilter("ignore", DeprecationWarning)
            images = decode_jpeg(encoded.data, mode=_READ_MODE[self.channels], device=labels.device)
        return torch.stack([self.pipeline(to_channels(image, self.channels)) for image in images]), labels


class _Chain(nn.Module):
    def __init__(self, *steps: nn.Module) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, batch: Any) -> Any:
        for step in self.steps:
            batch = step(batch)
        return batch


def device_transform(stage: str, *, num_classes: int | None = None, mixup_alpha: float = 0.0,
                     cutmix_alpha: float = 0.0, prob: float = 1.0, switch_prob: float = 0.5,
                     label_smoothing: float = 0.0, decode: str = "cpu", **pipeline: Any) -> nn.Module | None:
    """The plugin's ``device_transform(stage, **options)``.

    ``decode="cuda"``: decode the JPEG batch on the device and run the stage's crop/flip/normalize pipeline
    there; ``pipeline`` takes the same options as the plugin's ``transform`` (``size``, ``scale``, ``resize``,
    ``mean``, ...). Then, in training, MixUp/CutMix when an alpha is set (needs ``num_classes``). ``None`` when
    there is nothing to do (``decode="cpu"`` and no mixing, or evaluation).
    """
    from dltrain.plugins.vision.transforms import pipeline_transform  # imports this module: not at the top

    if decode not in DECODE_PLACES:
        raise ConfigurationError(f"decode must be one of {', '.join(DECODE_PLACES)}, not {decode!r}")
    steps: list[nn.Module] = []
    if decode == "cuda":
        cpu_path = pipeline_transform(stage, **pipeline)  # the same pipeline the workers would run
        steps.append(DeviceDecode(cpu_path.pipeline, cpu_path.channels))
    elif pipeline:
        raise ConfigurationError(f"{sorted(pipeline)} are options of the image pipeline, which runs on the device "
                                 "only with decode='cuda'; give them to the plugin's transform")
    if check_stage(stage) == "train" and (mixup_alpha > 0 or cutmix_alpha > 0):
        if num_classes is None:
            raise ConfigurationError("MixUp/CutMix need num_classes=")
        steps.append(BatchMix(MixUpCutMix(num_classes, mixup_alpha, cutmix_alpha, prob=prob, switch_prob=switch_prob,
                                          label_smoothing=label_smoothing)))
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else _Chain(*steps)
