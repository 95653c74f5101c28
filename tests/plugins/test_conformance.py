"""Every plugin, built-in or third-party, passes the same test: stream shards through the plugin's decode ->
transform -> collate for training and evaluation, run its device transform, and train and validate a task on it.

The third-party plugin is the example of docs/guides/plugins.md ("Writing a plugin"), installed from that page as a
package with a ``dltrain.plugins`` entry point, so the documented example is tested too.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import dltrain
import dltrain.plugins as plugins
from dltrain.data import DataPlugin, write_shards

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 3
BATCH = 4
WORDS = ["red", "green", "blue"]  # one word per class, so the text task has something to learn


def _image_shards(tmp: Path, fmt: str = "png") -> list[str]:
    from dltrain.plugins.vision import encode_image

    g = torch.Generator().manual_seed(0)
    samples = [{"__key__": f"img{i:03d}", fmt: encode_image(torch.randint(0, 256, (3, 20, 24), generator=g,
                                                                         dtype=torch.uint8), format=fmt),
                "cls": i % NUM_CLASSES} for i in range(12)]
    return write_shards(samples, str(tmp / "img-%06d.tar"), max_count=6)


def _jpg_shards(tmp: Path) -> list[str]:
    return _image_shards(tmp, "jpg")


def _wav_shards(tmp: Path) -> list[str]:
    import soundfile as sf

    def wav(i: int) -> bytes:
        t = np.arange(2400) / 8000  # 0.3 s: longer than the clip, so training crops at random
        buf = io.BytesIO()
        sf.write(buf, (0.5 * np.sin(2 * np.pi * 300 * (1 + i % NUM_CLASSES) * t)).astype(np.float32), 8000,
                 format="WAV", subtype="PCM_16")
        return buf.getvalue()

    samples = [{"__key__": f"clip{i:03d}", "wav": wav(i), "cls": i % NUM_CLASSES} for i in range(12)]
    return write_shards(samples, str(tmp / "wav-%06d.tar"), max_count=6)


def _docs(n: int) -> list[tuple[str, int]]:
    rng = np.random.default_rng(0)
    return [(" ".join(rng.choice(["the", "a", "is", "very"], 5)) + f" {WORDS[i % NUM_CLASSES]}", i % NUM_CLASSES)
            for i in range(n)]


def _tokenizer() -> Any:
    from dltrain.plugins import text

    return text.train_tokenizer([d for d, _ in _docs(30)], vocab_size=300)


def _text_cls_shards(tmp: Path) -> list[str]:
    from dltrain.plugins import text

    return text.write_classification_shards(_docs(12), str(tmp / "cls-%06d.tar"), max_count=6)


def _text_lm_shards(tmp: Path) -> list[str]:
    from dltrain.plugins import text

    return text.write_lm_shards([d for d, _ in _docs(30)], _tokenizer(), str(tmp / "lm-%06d.tar"), seq_len=8,
                                max_count=10)


def _npy_shards(tmp: Path) -> list[str]:
    rng = np.random.default_rng(0)
    samples = [{"__key__": f"pt{i:03d}", "npy": (rng.normal(size=4) + i % NUM_CLASSES).astype(np.float32),
                "cls": i % NUM_CLASSES} for i in range(12)]
    return write_shards(samples, str(tmp / "pt-%06d.tar"), max_count=6)


@dataclass
class Case:
    plugin: str
    shards: Callable[[Path], list[str]]
    fields: set[str]  # the named fields of every sample the transform returns
    task: Callable[[dict[str, Any]], dltrain.Task]
    options: Callable[[], dict[str, Any]] = dict  # the transform's options (built lazily: a tokenizer takes time)
    device_options: dict[str, Any] = field(default_factory=dict)
    # the transform options that read the shards as unlabelled (None: the plugin has no class labels to drop)
    unlabelled: dict[str, Any] | None = None


CASES = {
    "vision": Case("vision", _image_shards, {"image", "label"},
                   lambda o: plugins.get("vision").tasks["classification"]("resnet18", NUM_CLASSES, lr=0.01),
                   lambda: {"size": 16, "num_classes": NUM_CLASSES},
                   {"num_classes": NUM_CLASSES, "mixup_alpha": 0.2, "cutmix_alpha": 1.0}, {"label_key": None}),
    # decode="cuda" on the CPU: JPEG bytes collated by the workers, decoded by the device transform and the task
    "vision decode=cuda": Case(
        "vision", _jpg_shards, {"jpeg", "label"},
        lambda o: plugins.get("vision").tasks["classification"]("resnet18", NUM_CLASSES, lr=0.01, decode="cuda",
                                                                image_options={"size": 16}),
        lambda: {"size": 16, "num_classes": NUM_CLASSES, "decode": "cuda"},
        {"num_classes": NUM_CLASSES, "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "decode": "cuda", "size": 16},
        {"label_key": None}),
    "audio": Case("audio", _wav_shards, {"waveform", "label"},
                  lambda o: plugins.get("audio").tasks["classification"](NUM_CLASSES, sample_rate=8000, n_mels=16),
                  lambda: {"sample_rate": 8000, "clip_seconds": 0.25},
                  {"sample_rate": 8000, "n_mels": 16}, {"label_key": None}),
    "text-classification": Case(
        "text", _text_cls_shards, {"input_ids", "label", "n_replaced", "truncated"},
        lambda o: plugins.get("text").tasks["classification"](num_classes=NUM_CLASSES, tokenizer=o["tokenizer"],
                                                              d_model=16, n_layers=1, n_heads=2, max_length=16),
        lambda: {"tokenizer": _tokenizer(), "max_length": 16}, unlabelled={"label_field": None}),
    "text-lm": Case(
        "text", _text_lm_shards, {"ids", "n_bytes"},
        lambda o: plugins.get("text").tasks["language_model"](tokenizer=o["tokenizer"], context_length=8, n_layers=1,
                                                              n_heads=2, d_model=16),
        lambda: {"tokenizer": _tokenizer()}),
    "points (third-party, from docs/guides/plugins.md)": Case(
        "points", _npy_shards, {"x", "label"},
        lambda o: plugins.get("points").tasks["classification"](4, NUM_CLASSES),
        lambda: {"noise": 0.1}),
}


def _design_example() -> str:
    doc = (REPO / "docs" / "guides" / "plugins.md").read_text()
    found = re.search(r"<!-- plugin-example: dltrain_points\.py -->\n```python\n(.*?)```", doc, re.S)
    assert found, "docs/guides/plugins.md lost its plugin example"
    return found.group(1)


@pytest.fixture(autouse=True)
def _points_package(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/guides/plugins.md's example plugin as an installed third-party package: a module and its dist-info (with the
    entry point) on sys.path, as ``pip install`` leaves them."""
    root = tmp_path_factory.mktemp("site")
    (root / "dltrain_points.py").write_text(_design_example())
    info = root / "dltrain_points-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dltrain-points\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dltrain.plugins]\npoints = dltrain_points:plugin\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "dltrain_points", raising=False)
    monkeypatch.setattr(plugins, "_registered", dict(plugins._registered))


def test_design_example_is_about_forty_lines() -> None:
    code = [line for line in _design_example().splitlines() if line.strip()]
    assert len(code) <= 45, f"the plugin example in docs/guides/plugins.md grew to {len(code)} lines"


def test_every_registered_plugin_has_a_case() -> None:
    # A plugin added to the registry (built-in or installed) must be added to CASES to pass the same test.
    assert "points" in plugins.available()  # found through its entry point, not registered by hand
    assert set(plugins.available()) <= {case.plugin for case in CASES.values()}


def _trainer(tmp_path: Path, **kw: Any) -> dltrain.Trainer:
    return dltrain.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                           enable_checkpointing=False, default_root_dir=str(tmp_path / "run"), seed=0, **kw)


@pytest.mark.parametrize("name", list(CASES))
def test_plugin_conformance(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    plugin = plugins.get(case.plugin)
    assert isinstance(plugin, DataPlugin)
    urls = case.shards(tmp_path)
    options = case.options()
    loaders = {}
    for stage in ("train", "val"):
        transform = plugin.transform(stage, **options)
        pickle.loads(pickle.dumps(transform))  # it must travel to loader worker processes
        # decode -> transform: every sample is a dict with the plugin's named fields
        samples = next(iter(plugin.dataset(urls, stage, batch_size=BATCH, options=options, collate_fn=list)))
        assert len(samples) == BATCH
        assert all(isinstance(s, dict) and set(s) == case.fields for s in samples), samples[0]
        if "label" in case.fields:
            assert all(0 <= s["label"] < NUM_CLASSES for s in samples)
        # -> collate, the same as the loader that StreamingDataset(plugin=...) builds
        batch = plugin.collate(samples) if plugin.collate is not None else samples
        loaded = next(iter(plugin.dataset(urls, stage, batch_size=BATCH, options=options, shuffle=False)))
        assert type(loaded) is type(batch)
        # device transform: batch -> batch of the same size
        device_transform = plugin.device_transform(stage, **case.device_options)
        if device_transform is not None:
            out = device_transform(batch)
            assert len(out) == len(batch)
            first = out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))
            assert first.shape[0] == BATCH and torch.isfinite(first).all()
        loaders[stage] = plugin.loader(urls, stage, batch_size=BATCH, num_workers=0, options=options)
    if case.plugin == "vision":  # MixUp/CutMix turns labels into soft targets in training only
        assert plugin.device_transform("train", **case.device_options)(batch)[1].shape == (BATCH, NUM_CLASSES)
    # a task's steps, under the Trainer, on the plugin's loaders
    task = case.task(options)
    before = [p.detach().clone() for p in task.parameters()]
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(task, loaders["train"])
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, task.parameters())), "training changed nothing"
    metrics = trainer.validate(task, loaders["val"])[0]
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics


@pytest.mark.parametrize("name", list(CASES))
def test_unlabelled_samples_have_label_minus_one(name: str, tmp_path: Path) -> None:
    # The rule of every domain (dltrain.data.domain): an unlabelled sample keeps its "label" field, set to -1.
    case = CASES[name]
    if case.unlabelled is None:
        pytest.skip("no class labels" if "label" not in case.fields else "the example reads labelled shards only")
    plugin = plugins.get(case.plugin)
    urls = case.shards(tmp_path)
    options = {**case.options(), **case.unlabelled}
    for stage in ("val", "predict"):
        samples = next(iter(plugin.dataset(urls, stage, batch_size=BATCH, options=options, collate_fn=list)))
        assert all(set(s) == case.fields and s["label"] == -1 for s in samples), samples[0]
        batch = next(iter(plugin.dataset(urls, stage, batch_size=BATCH, options=options)))
        labels = batch["labels"] if isinstance(batch, dict) else batch[1]  # the labelled batch's shape
        assert labels.tolist() == [-1] * BATCH
        device_transform = plugin.device_transform(stage, **case.device_options)
        if device_transform is not None:
            assert device_transform(batch)[1].tolist() == [-1] * BATCH


def test_core_takes_any_object_with_the_protocol(tmp_path: Path) -> None:
    # Not a dltrain Plugin at all: a plain class with the four members the core uses.
    class Doubler:
        name = "doubler"
        decoders: dict[str, Any] = {}
        collate = None

        def transform(self, stage: str, **options: Any) -> Any:
            return _Double(options.get("factor", 2))

        def device_transform(self, stage: str, **options: Any) -> None:
            return None

    from dltrain.data import StreamingDataset

    urls = _npy_shards(tmp_path)
    ds = StreamingDataset(urls, batch_size=BATCH, plugin=Doubler(), stage="val", options={"factor": 3})
    batch = next(iter(ds))
    assert batch["label"].tolist() == [3 * (i % NUM_CLASSES) for i in range(BATCH)]  # val: in order, tripled
    assert not ds.training and not ds.shuffle  # evaluation stages: every sample once, in order


class _Double:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {"label": self.factor * int(sample["cls"])}


def test_plugin_arguments_are_checked(tmp_path: Path) -> None:
    from dltrain.data import StreamingDataset
    from dltrain.errors import ConfigurationError

    vision = plugins.get("vision")
    urls = _npy_shards(tmp_path)
    with pytest.raises(ConfigurationError, match="stage"):
        StreamingDataset(urls, batch_size=2, plugin=vision)
    with pytest.raises(ConfigurationError, match="stage must be one of"):
        vision.dataset(urls, "eval-ish", batch_size=2)
    with pytest.raises(ConfigurationError, match="either map= or plugin="):
        StreamingDataset(urls, batch_size=2, plugin=vision, stage="train", map=lambda s: s)
    with pytest.raises(ConfigurationError, match="pass plugin="):
        StreamingDataset(urls, batch_size=2, stage="train")
