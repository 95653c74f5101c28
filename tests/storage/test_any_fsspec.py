"""Any fsspec URL, not only s3://: shards, their index and checkpoints on fsspec's in-memory filesystem.

The S3 tests run against a real server (moto); gs:// and az:// need their services, which this machine cannot
reach. ``memory://`` goes through the same code (fsspec's generic file system: ranged reads, commit objects, no
rename) without any S3 specifics, so a path that worked only for s3fs would fail here.
"""

from __future__ import annotations

import fsspec
import pytest
import torch

from dltrain.callbacks import ModelCheckpoint
from dltrain.data import StreamingDataset, write_shards
from dltrain.data.index import build_index
from tests.helpers.tasks import TinyTask, loader, quiet_trainer


@pytest.fixture
def memory():
    fs = fsspec.filesystem("memory")
    root = f"memory://dltrain-test-{id(fs)}"
    yield root
    fs.rm(root.removeprefix("memory://"), recursive=True)


@pytest.mark.filterwarnings("error")  # e.g. "no shard index at ...": the index must be found on the store
def test_shards_and_their_index_on_a_memory_url_are_read_exactly_once(memory):
    keys = [f"k{i:03d}" for i in range(53)]
    write_shards(({"__key__": k, "cls": i} for i, k in enumerate(keys)), f"{memory}/data/train-%06d.tar",
                 max_count=10, index=False)
    pattern = f"{memory}/data/train-{{000000..000005}}.tar"
    index = build_index(pattern)  # written at the default place on the store
    assert fsspec.filesystem("memory").exists(f"{memory}/data/train.index.json".removeprefix("memory://"))
    assert [shard["samples"] for shard in index["shards"]] == [10, 10, 10, 10, 10, 3]
    seen: list[str] = []
    ds = StreamingDataset(pattern, batch_size=4, training=False, shuffle=True, seed=3,
                          map=lambda s: s["__key__"], collate_fn=list)
    for epoch in range(2):
        ds.set_epoch(epoch)
        got = [k for batch in ds for k in batch]
        assert sorted(got) == keys, f"epoch {epoch}: not every sample exactly once"
        seen.append(",".join(got))
    assert seen[0] != seen[1]  # shuffled per epoch


def test_checkpoints_on_a_memory_url_resume_exactly(memory, tmp_path):
    def fit(root, ckpt_path=None, max_steps=-1):
        torch.manual_seed(0)
        cb = ModelCheckpoint(dirpath=f"{memory}/run", save_top_k=1, every_n_train_steps=2, save_last=True)
        trainer = quiet_trainer(root, max_epochs=2, callbacks=[cb], enable_checkpointing=True, max_steps=max_steps)
        task = TinyTask(dropout=0.1)
        trainer.fit(task, loader(n=32, shuffle=True), loader(n=8), ckpt_path=ckpt_path)
        return trainer, task

    fit(tmp_path / "a", max_steps=5)  # stops mid-epoch 1; "last" is step 5
    resumed, task = fit(tmp_path / "b", ckpt_path="last")
    assert resumed.global_step == 8
    _, whole = fit(tmp_path / "c")
    for name, value in whole.state_dict().items():
        assert torch.equal(task.state_dict()[name], value), name
