"""No credential in a checkpoint, a log or an error: given as ``storage_options`` (not in the environment), the
secret key is nowhere in what a fit writes to the store or to local disk, nor in the error of a store that fails,
nor in the warnings of its retries."""

from __future__ import annotations

import logging

import pytest
import torch

from dltrain import _storage
from dltrain.callbacks import ModelCheckpoint
from tests.helpers.s3 import ACCESS_KEY, SECRET
from tests.helpers.tasks import TinyTask, loader, quiet_trainer

_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _options(endpoint: str) -> dict:
    return {"key": ACCESS_KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint}}


def _scan_local(folder) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_storage_options_credentials_are_written_nowhere(s3, tmp_path, monkeypatch, caplog):
    for var in _CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    options = _options(s3.endpoint)
    run = s3.url("creds/run")
    cb = ModelCheckpoint(dirpath=run, every_n_train_steps=2, storage_options=options)
    torch.manual_seed(0)
    trainer = quiet_trainer(tmp_path / "root", max_epochs=2, callbacks=[cb], enable_checkpointing=True)
    with caplog.at_level(logging.DEBUG):
        trainer.fit(TinyTask(), loader(n=32), loader(n=16))
        task = TinyTask.load_from_checkpoint(cb.last_model_path, storage_options=options)
    assert cb.last_model_path == f"{run}/last.ckpt" and task is not None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)  # to list what was written
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    keys = s3.objects("creds")
    assert any(k.endswith("last.ckpt") for k in keys) and any("/.parts/" in k for k in keys), keys
    for key in keys:
        assert SECRET.encode() not in s3.read(key) and ACCESS_KEY.encode() not in s3.read(key), key
    assert _scan_local(tmp_path) == []
    assert not [r.getMessage() for r in caplog.records if SECRET in r.getMessage()]


def test_errors_and_retry_warnings_name_the_url_and_no_credential(s3_faults, tmp_path, monkeypatch, caplog):
    bucket, proxy = s3_faults
    for var in _CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    options = _options(bucket.endpoint)
    # A URL with credentials in its user info (as some tools print them) is redacted too.
    assert SECRET not in _storage.redact(f"s3://{ACCESS_KEY}:{SECRET}@bucket/x")
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(TinyTask(), loader(n=16))
    proxy.down(503)
    url = bucket.url("down/model.ckpt")
    with caplog.at_level(logging.WARNING, logger="dltrain.storage"), pytest.raises(OSError) as info:
        trainer.save_checkpoint(url, storage_options=options)
    text = f"{info.value!r} {info.value} {info.value.__cause__!r}"
    assert "down/model.ckpt" in text and "kept failing" in text
    messages = [r.getMessage() for r in caplog.records]
    assert messages and all(SECRET not in m and ACCESS_KEY not in m for m in messages), messages
    assert SECRET not in text and ACCESS_KEY not in text, text
