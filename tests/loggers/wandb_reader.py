"""Read what an offline wandb run wrote (``run-<id>.wandb``) without the network.

The file is a leveldb log (https://github.com/google/leveldb/blob/main/doc/log_format.md): a 7-byte header
(``:W&B``, magic, version), then 32 KiB blocks of records ``crc32:u32 length:u16 type:u8 data``, where ``data``
(possibly split over FIRST/MIDDLE/LAST fragments) is a serialized ``wandb_internal_pb2.Record``.
wandb 0.19+ no longer ships a Python reader (``wandb.sdk.internal.datastore``), so the tests carry this one.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_BLOCK = 32768
_HEADER = 7


def read_records(path: str | Path) -> list[Any]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:7]
    records: list[Any] = []
    pos = _HEADER
    pending = b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:  # block trailer: padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if kind == 1:  # FULL
            pending = chunk
        elif kind == 2:  # FIRST
            pending = chunk
            continue
        elif kind == 3:  # MIDDLE
            pending += chunk
            continue
        elif kind == 4:  # LAST
            pending += chunk
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        records.append(record)
        pending = b""
    return records


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``run.log`` in the order written: ``{"_step": int, name: value, ...}``."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        if record.history.HasField("step"):
            row.setdefault("_step", record.history.step.num)
        rows.append(row)
    return rows


def read_artifacts(path: str | Path) -> list[dict[str, Any]]:
    """The artifacts the run logged, in order: name, type, aliases, metadata and the files' names and sizes."""
    out = []
    for record in read_records(path):
        if record.WhichOneof("record_type") != "artifact":
            continue
        a = record.artifact
        out.append({"name": a.name, "type": a.type, "aliases": sorted(a.aliases),
                    "metadata": json.loads(a.metadata or "{}"),
                    "files": {c.path: c.size for c in a.manifest.contents}, "local": [c.local_path for c in a.manifest.contents]})
    return out


def read_run_ids(path: str | Path) -> set[str]:
    return {r.run.run_id for r in read_records(path) if r.WhichOneof("record_type") == "run"}


def has_exit_record(path: str | Path) -> bool:
    """True once the run's file is complete (wandb writes it asynchronously, after ``finish()`` returns)."""
    try:
        return any(r.WhichOneof("record_type") == "exit" for r in read_records(path))
    except Exception:  # a record still being written
        return False


def run_start_time(path: str | Path) -> int:
    """When the run segment of this file started (ns): the order ``wandb sync`` replays resumed segments in.

    Folder names do not give it: two segments started in the same second are ``offline-run-<time>-<id>`` and
    ``offline-run-<time>-<id>-1``, and as paths (``.../<id>/run-...`` vs ``.../<id>-1/run-...``) the second sorts
    first.
    """
    starts = [r.run.start_time.ToNanoseconds() for r in read_records(path) if r.WhichOneof("record_type") == "run"]
    return min(starts) if starts else 0
