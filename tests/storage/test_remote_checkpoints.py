"""Checkpoints on a real S3 server (moto on 127.0.0.1, the standard AWS_* variables): commit objects, last/best,
resume, load_from_checkpoint, rotation that deletes only what it wrote, and no credential anywhere."""

from __future__ import annotations

import json

import pytest
import torch

from dltrain import _remote_checkpoint
from dltrain import checkpoint as ckpt_io
from dltrain.callbacks import ModelCheckpoint
from dltrain.errors import CheckpointError
from tests.helpers.s3 import SECRET
from tests.helpers.tasks import TinyTask, loader, quiet_trainer

# loader(n=32) with batches of 8: 4 optimizer steps per epoch.


def _fit(root, *, epochs, callbacks=(), ckpt_path=None, task=None, **kwargs):
    torch.manual_seed(0)
    trainer = quiet_trainer(root, max_epochs=epochs, callbacks=list(callbacks), enable_checkpointing=True,
                            **kwargs)
    task = task or TinyTask(dropout=0.1)
    trainer.fit(task, loader(n=32, shuffle=True), loader(n=16), ckpt_path=ckpt_path)
    trainer.task_ = task
    return trainer


def _weights(task) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in task.state_dict().items()}


def test_checkpoints_on_s3_are_commits_and_resume_is_exact(s3, tmp_path):
    run = s3.url("runs/a")
    cb = ModelCheckpoint(dirpath=run, save_top_k=2, every_n_train_steps=3, every_n_epochs=1)
    trainer = _fit(tmp_path / "r1", epochs=2, callbacks=[cb])
    assert trainer.global_step == 8
    keys = s3.objects("runs/a")
    ckpts = sorted(k for k in keys if k.endswith(".ckpt"))
    # save_top_k=2 (newest): the step-3 and step-4 checkpoints were rotated out, their parts with them
    assert ckpts == ["runs/a/epoch=1-step=6.ckpt", "runs/a/epoch=1-step=8.ckpt", "runs/a/last.ckpt"]
    parts = {k.split("/")[3] for k in keys if "/.parts/" in k}
    assert len(parts) == 2, keys  # last.ckpt names the parts of step 8: no third copy
    last = json.loads(s3.read("runs/a/last.ckpt"))
    assert last["format"] == "dltrain.checkpoint-commit" and last["global_step"] == 8
    assert last["parts"] == json.loads(s3.read("runs/a/epoch=1-step=8.ckpt"))["parts"]
    assert cb.last_model_path == f"{run}/last.ckpt" and cb.best_model_path == f"{run}/epoch=1-step=8.ckpt"

    # Resume from "last" on the store: bitwise what the uninterrupted run of 3 epochs gives.
    resumed_cb = ModelCheckpoint(dirpath=run, save_top_k=2, every_n_train_steps=3, every_n_epochs=1)
    task = TinyTask(dropout=0.1)
    resumed = _fit(tmp_path / "r2", epochs=3, callbacks=[resumed_cb], ckpt_path="last", task=task)
    assert resumed.global_step == 12
    ref_task = _fit(tmp_path / "ref", epochs=3, callbacks=[
        ModelCheckpoint(dirpath=tmp_path / "ref-ckpt", save_top_k=2, every_n_train_steps=3,
                        every_n_epochs=1)]).task_
    for (name, a), b in zip(_weights(task).items(), _weights(ref_task).values()):
        assert torch.equal(a, b), name

    # load_from_checkpoint and ckpt_io.load read a commit; best is a URL
    loaded = TinyTask.load_from_checkpoint(f"{run}/last.ckpt")
    for a, b in zip(_weights(loaded).values(), _weights(task).values()):
        assert torch.equal(a, b)
    assert ckpt_io.load(resumed_cb.best_model_path)["loops"]["global_step"] == 12
    assert ckpt_io.find_last(run) == f"{run}/last.ckpt"
    assert _remote_checkpoint.remove_stale_parts(run) == []

    # No credential anywhere in what was written.
    for key in s3.objects():
        assert SECRET.encode() not in s3.read(key), key


def test_a_kill_between_parts_and_commit_leaves_the_previous_last(s3, tmp_path, monkeypatch):
    """Parts written, commit never written (the process died): last still names the previous checkpoint, which
    loads; a new fit removes the orphaned parts of this host's dead process."""
    run = s3.url("k")
    _fit(tmp_path / "a", epochs=1, callbacks=[ModelCheckpoint(dirpath=run, save_top_k=1)])
    before = json.loads(s3.read("k/last.ckpt"))
    orphan = _remote_checkpoint.new_parts(f"{run}/epoch=1-step=8.ckpt").replace("-" + str(__import__("os").getpid())
                                                                                + "-", "-999999-")
    from dltrain import _storage

    _storage.write_bytes(f"{orphan}/checkpoint.pt", b"half a checkpoint")
    assert ckpt_io.find_last(run) == f"{run}/last.ckpt"
    assert ckpt_io.load(f"{run}/last.ckpt")["loops"]["global_step"] == 4
    assert json.loads(s3.read("k/last.ckpt")) == before
    removed = _remote_checkpoint.remove_stale_parts(run)
    assert removed == [orphan]
    assert not any(orphan.split("/", 3)[3] in k for k in s3.objects())


def test_commit_naming_missing_parts_is_a_clear_error_and_last_falls_back(s3, tmp_path):
    run = s3.url("m")
    _fit(tmp_path / "a", epochs=2, callbacks=[ModelCheckpoint(dirpath=run, save_top_k=-1)])
    parts = json.loads(s3.read("m/epoch=1-step=8.ckpt"))["parts"]
    s3.fs.rm(f"{s3.name}/m/{parts}", recursive=True)  # damaged afterwards: both step 8 and last name these parts
    with pytest.raises(CheckpointError, match=r"epoch=1-step=8.ckpt.*checkpoint.pt \(missing\)"):
        ckpt_io.load(f"{run}/epoch=1-step=8.ckpt")
    assert ckpt_io.find_last(run) == f"{run}/epoch=0-step=4.ckpt"
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt_io.load(f"{run}/nothing.ckpt")


def test_a_second_run_never_deletes_the_first_runs_checkpoints(s3, tmp_path):
    run = s3.url("shared")
    _fit(tmp_path / "a", epochs=2, callbacks=[ModelCheckpoint(dirpath=run, save_top_k=1)])
    first = {k: s3.read(k) for k in s3.objects("shared")}
    cb = ModelCheckpoint(dirpath=run, save_top_k=1)
    _fit(tmp_path / "b", epochs=3, callbacks=[cb])
    after = {k: s3.read(k) for k in s3.objects("shared")}
    assert {k: v for k, v in after.items() if k in first} == first, "the first run's objects changed"
    assert "shared/last-v1.ckpt" in after and "shared/epoch=2-step=12.ckpt" in after
    assert cb.last_model_path.endswith("last-v1.ckpt")


def test_default_root_dir_on_s3_and_best(s3, tmp_path):
    root = s3.url("root")
    trainer = quiet_trainer(root, max_epochs=2, enable_checkpointing=True,
                            callbacks=[ModelCheckpoint(monitor="val/loss", save_top_k=1)])
    torch.manual_seed(0)
    trainer.fit(TinyTask(), loader(n=32), loader(n=16))
    folder = trainer.checkpoint_callback.dirpath
    assert folder == f"{root}/checkpoints"  # no logger: Lightning's folder
    best = trainer.checkpoint_callback.best_model_path
    assert best.startswith(folder + "/") and ckpt_io.is_loadable(best)
    assert trainer.validate(TinyTask(), loader(n=16), ckpt_path="best", verbose=False)
    again = quiet_trainer(root, max_epochs=3, enable_checkpointing=True,
                          callbacks=[ModelCheckpoint(monitor="val/loss", save_top_k=1)])
    again.fit(TinyTask(), loader(n=32), loader(n=16), ckpt_path="last")
    assert again.global_step == 12 and again.checkpoint_callback.dirpath == folder  # the run it resumed


def test_store_that_stays_down_names_the_url_and_no_secret(s3_faults, tmp_path):
    bucket, proxy = s3_faults
    proxy.down(503)
    url = bucket.url("down/model.ckpt")
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(TinyTask(), loader(n=16))
    with pytest.raises(OSError) as info:
        trainer.save_checkpoint(url)
    text = str(info.value)
    assert url.split("/", 3)[2] in text and "kept failing" in text and SECRET not in text
    assert proxy.hits["status"] >= 6


def test_transient_faults_on_checkpoint_writes_are_retried(s3_faults, tmp_path, caplog):
    bucket, proxy = s3_faults
    proxy.fail(2, 503, method="PUT")
    proxy.fail(1, 500, method="GET")
    proxy.cut(1, method="GET")
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(TinyTask(), loader(n=16))
    url = bucket.url("flaky/model.ckpt")
    with caplog.at_level("WARNING", logger="dltrain.storage"):
        trainer.save_checkpoint(url)
        loaded = ckpt_io.load(url)
    assert loaded["loops"]["global_step"] == 2
    assert proxy.hits == {"status": 3, "cut": 1}
    retries = [r.getMessage() for r in caplog.records if "transient error" in r.getMessage()]
    assert len(retries) == 4 and all("flaky/" in m and SECRET not in m for m in retries), retries
