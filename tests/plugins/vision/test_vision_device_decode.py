"""``decode="cuda"``: JPEG bytes collated in the workers, decoded by ``torchvision.io.decode_jpeg`` on the batch's
device. On a CPU machine the same code path decodes on the CPU; the CUDA test runs where there is a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("torchvision")

import dltrain
import dltrain.plugins
from dltrain.data import write_shards
from dltrain.errors import DataError
from dltrain.plugins.vision import EncodedJpegs, encode_image

vision = dltrain.plugins.get("vision")
OPTIONS = {"size": 16, "resize": 16, "num_classes": 3}


def _image(i: int) -> torch.Tensor:
    # smooth gradients plus a class-dependent block: JPEG keeps them, so the classes stay learnable
    y, x = torch.meshgrid(torch.arange(24), torch.arange(20), indexing="ij")
    img = torch.stack([(x * 9 + i) % 256, (y * 7) % 256, ((x + y) * 5) % 256]).to(torch.uint8)
    img[:, 4:12, 4:12] = 255 * (i % 3 == 0)
    return img


def _shards(tmp_path: Path, n: int = 12, fmt: str = "jpg") -> list[str]:
    samples = [{"__key__": f"img{i:03d}", fmt: encode_image(_image(i), format=fmt), "cls": i % 3} for i in range(n)]
    return write_shards(samples, str(tmp_path / f"{fmt}-%06d.tar"), max_count=6)


def test_device_decode_gives_the_cpu_path_images(tmp_path: Path) -> None:
    urls = _shards(tmp_path)
    encoded, labels = next(iter(vision.dataset(urls, "val", batch_size=4, options={**OPTIONS, "decode": "cuda"})))
    assert isinstance(encoded, EncodedJpegs) and len(encoded) == 4 and labels.tolist() == [0, 1, 2, 0]
    decode = vision.device_transform("val", decode="cuda", **OPTIONS)
    images, same_labels = decode((encoded, labels))
    cpu_images, cpu_labels = next(iter(vision.dataset(urls, "val", batch_size=4, options=OPTIONS)))
    assert images.shape == cpu_images.shape == (4, 3, 16, 16) and torch.equal(same_labels, cpu_labels)
    # the same libjpeg-turbo decode and the same pipeline: the same pixels
    torch.testing.assert_close(images, cpu_images, rtol=0, atol=1e-6)


def test_training_pipeline_on_the_device_is_random_and_seeded(tmp_path: Path) -> None:
    urls = _shards(tmp_path)
    batch = next(iter(vision.dataset(urls, "train", batch_size=4, options={**OPTIONS, "decode": "cuda"},
                                     shuffle=False)))
    augment = vision.device_transform("train", decode="cuda", scale=(0.3, 1.0), mixup_alpha=0.2, **OPTIONS)
    torch.manual_seed(0)
    a = augment(batch)
    torch.manual_seed(0)
    b = augment(batch)
    c = augment(batch)
    assert a[0].shape == (4, 3, 16, 16) and a[1].shape == (4, 3)  # decoded, cropped, then mixed (soft targets)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_non_jpeg_is_a_data_error_naming_the_sample(tmp_path: Path) -> None:
    urls = _shards(tmp_path, n=3, fmt="png")
    with pytest.raises(DataError, match="JPEG only") as info:
        next(iter(vision.dataset(urls, "val", batch_size=3, options={**OPTIONS, "decode": "cuda"})))
    assert "img000" in str(info.value)
    skipped = vision.dataset(urls, "val", batch_size=3, options={**OPTIONS, "decode": "cuda"}, on_error="skip")
    assert next(iter(skipped)) is None  # every sample of the batch was bad


class _DeviceDecodingTask(dltrain.Task):
    """A task that takes its device transforms from the plugin, one per stage."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
        self.train_transform = vision.device_transform("train", decode="cuda", **OPTIONS)
        self.eval_transform = vision.device_transform("val", decode="cuda", **OPTIONS)
        self.seen: list[str] = []

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        self.seen.append(type(batch[0]).__name__)  # the transfer left the JPEG bytes alone
        return (self.train_transform if self.training else self.eval_transform)(batch)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self.net(batch[0]), batch[1])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/acc", (self.net(batch[0]).argmax(-1) == batch[1]).float().mean())

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_trainer_with_workers_and_device_decode(tmp_path: Path) -> None:
    urls = _shards(tmp_path)
    options = {**OPTIONS, "decode": "cuda"}
    train = vision.loader(urls, "train", batch_size=4, num_workers=1, options=options)  # bytes cross processes
    val = vision.loader(urls, "val", batch_size=4, num_workers=1, options=options)
    task = _DeviceDecodingTask()
    trainer = dltrain.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                              enable_checkpointing=False, default_root_dir=str(tmp_path / "run"), seed=0, max_epochs=2)
    trainer.fit(task, train, val)
    assert set(task.seen) == {"EncodedJpegs"} and len(task.seen) >= 2 * (3 + 3)  # 2 epochs (+ sanity check)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_image_classification_task_takes_its_device_transforms_from_the_plugin(tmp_path: Path) -> None:
    from dltrain.plugins.vision import ImageClassificationTask

    urls = _shards(tmp_path)
    image_options = {"size": 16, "resize": 16}
    jpeg_options = {**image_options, "num_classes": 3, "decode": "cuda"}
    train = vision.loader(urls, "train", batch_size=4, num_workers=0, options=jpeg_options)
    val = vision.loader(urls, "val", batch_size=4, num_workers=0, options=jpeg_options)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    task = ImageClassificationTask(model, num_classes=3, lr=0.05, scheduler="none", mixup_alpha=0.2,
                                   decode="cuda", image_options=image_options)
    seen: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    trainer = dltrain.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                              enable_checkpointing=False, default_root_dir=str(tmp_path / "run"), seed=0, max_steps=3)
    trainer.fit(task, train)
    assert seen and set(seen) == {(4, 3, 16, 16)}  # the model saw decoded images, never the JPEG bytes
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "train/acc_step" not in trainer.callback_metrics  # the training stage's transform mixed the labels
    # validation: the eval pipeline on the device gives the CPU path's metrics, to float precision
    on_device = trainer.validate(task, val)[0]
    cpu_val = vision.loader(urls, "val", batch_size=4, num_workers=0, options={**image_options, "num_classes": 3})
    on_cpu = trainer.validate(ImageClassificationTask(model, num_classes=3), cpu_val)[0]
    assert on_device.keys() == on_cpu.keys() and "val/acc" in on_device
    for name, value in on_device.items():
        assert value == pytest.approx(on_cpu[name], abs=1e-5), name


@pytest.mark.cuda
def test_nvjpeg_decode_matches_the_cpu_decode(tmp_path: Path) -> None:
    urls = _shards(tmp_path)
    encoded, labels = next(iter(vision.dataset(urls, "val", batch_size=4, options={**OPTIONS, "decode": "cuda"})))
    decode = vision.device_transform("val", decode="cuda", **OPTIONS)
    gpu, _ = decode((encoded, labels.cuda()))
    cpu, _ = decode((encoded, labels))
    assert gpu.device.type == "cuda"
    # nvJPEG and libjpeg-turbo may round the IDCT and upsampling differently: about one grey level apart
    assert (gpu.cpu() - cpu).abs().mean() < 2 / 255 / 0.226
