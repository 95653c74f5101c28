"""Checkpoints on an object store (``s3://``, ``gs://``, any fsspec URL): parts first, then one commit object.

An object store has no rename and no symbolic link, and a prefix of many objects is never written in one step.
So a checkpoint named ``<folder>/<name>.ckpt`` is, on a store, a small *commit object* (JSON) written last, by one
PUT, which a store makes visible only once complete::

    <folder>/<name>.ckpt                        {"format": "dltrain.checkpoint-commit", "version": 1,
                                                 "parts": ".parts/<name>.<host>-<pid>-<hex>",
                                                 "files": {"checkpoint.pt": 123456}, "sharded": false,
                                                 "global_step": 40, "epoch": 1, "saved_at": 1765000000.0}
    <folder>/.parts/<name>.<host>-<pid>-<hex>/checkpoint.pt      the torch.save bytes (one file)
                                          .../meta.pt, .metadata, __<rank>_<n>.distcp   (a sharded checkpoint)

Every part is written (and, for sharded checkpoints, every rank's shards) before the commit object; ``last.ckpt`` is
another commit object naming the same parts, replaced in one PUT after the named one. A reader trusts only commit
objects: it reads one, checks that each part it lists exists with its size, and reads the parts. A kill at any
moment therefore leaves either the old commit or the new one; parts that no commit names (a save killed before its
commit) are removed at the start of the next fit by the host and process id in their name, as local temporaries are.
An object that is not a commit (a checkpoint file uploaded as it is) loads as a plain checkpoint file.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any

import torch

from dltrain import _storage
from dltrain.errors import CheckpointError

COMMIT_FORMAT = "dltrain.checkpoint-commit"
PARTS_DIR = ".parts"
FILE_PART = "checkpoint.pt"
_PARTS_RE = re.compile(r"^(?P<name>.+)\.(?P<host>[^/]+)-(?P<pid>\d+)-(?P<hex>[0-9a-f]{8})$")
_STEP_RE = re.compile(r"step=(\d+)")
_LAST_RE = re.compile(r"^last(-v\d+)?\.ckpt$")

Options = Mapping[str, Any] | None


def new_parts(url: str) -> str:
    """A fresh parts prefix (a URL) for the checkpoint ``url``: unique, naming this host and process."""
    name = _storage.basename(url)
    return _storage.join(_storage.parent(url), PARTS_DIR,
                         f"{name}.{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save(checkpoint: dict[str, Any], url: str, storage_options: Options = None, data: bytes | None = None) -> None:
    """Write a one-file checkpoint at ``url``: its bytes as a part, then the commit object."""
    parts = new_parts(url)
    data = to_bytes(checkpoint) if data is None else data
    try:
        _storage.write_bytes(_storage.join(parts, FILE_PART), data, storage_options)
    except _storage.StorageError as err:  # name the checkpoint the user asked for, not only its part
        raise _storage.StorageError(f"saving the checkpoint {_storage.redact(url)} failed (nothing was committed; "
                                    f"the previous checkpoints are intact): {err}") from err
    commit(url, parts, {FILE_PART: len(data)}, checkpoint, sharded=False, storage_options=storage_options)


def commit(url: str, parts: str, files: Mapping[str, int], checkpoint: Mapping[str, Any], *, sharded: bool,
           storage_options: Options = None) -> dict[str, Any]:
    """Write the commit object ``url`` naming the complete ``parts`` (a URL in the same folder)."""
    loops = checkpoint.get("loops", {})
    record = {
        "format": COMMIT_FORMAT, "version": 1,
        "parts": parts[len(_storage.parent(url)) + 1:],  # relative: the folder can be copied elsewhere
        "files": dict(files), "sharded": sharded,
        "global_step": int(loops.get("global_step", -1)), "epoch": int(loops.get("epoch", -1)),
        "saved_at": time.time(),
    }
    write_commit(url, record, storage_options)
    return record


def write_commit(url: str, record: Mapping[str, Any], storage_options: Options = None) -> None:
    _storage.write_bytes(url, json.dumps(record, sort_keys=True).encode(), storage_options)


def read_commit(url: str, storage_options: Options = None) -> dict[str, Any] | None:
    """The commit object at ``url``, or None when the object is not a commit (a plain checkpoint file).

    Raises:
        CheckpointError: nothing at ``url``.
    """
    try:
        head = _storage.read_bytes(url, storage_options, start=0, end=1)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {_storage.redact(url)!r} does not exist") from None
    if head != b"{":
        return None
    try:
        record = json.loads(_storage.read_bytes(url, storage_options))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {_storage.redact(url)!r}: a damaged commit object ({err})") from err
    if not isinstance(record, dict) or record.get("format") != COMMIT_FORMAT:
        raise CheckpointError(f"{_storage.redact(url)!r} is a JSON object, not a dltrain checkpoint commit")
    return record


def parts_url(url: str, record: Mapping[str, Any]) -> str:
    return _storage.join(_storage.parent(url), str(record["parts"]))


def check_complete(url: str, record: Mapping[str, Any], storage_options: Options = None) -> str:
    """The parts URL of a commit, after checking that every part it lists is there with its size."""
    parts = parts_url(url, record)
    fs = _storage.filesystem(parts, storage_options)
    found = {_storage.basename(e["name"]): e.get("size") for e in _storage.listing(parts, storage_options)
             if e.get("type") != "directory"}
    del fs
    wrong = [f"{name} ({'missing' if name not in found else f'{found[name]} bytes, not {size}'})"
             for name, size in record["files"].items() if found.get(name) != size]
    if wrong:
        raise CheckpointError(
            f"checkpoint {_storage.redact(url)!r}: its commit names parts that are not on the store as written: "
            f"{', '.join(wrong)} under {_storage.redact(parts)} (deleted or damaged since). Pass ckpt_path='last' "
            "to use the newest complete one"
        )
    return parts


def load(url: str, storage_options: Options = None, weights_only: bool | None = None) -> dict[str, Any]:
    """Load the checkpoint ``url`` (a commit, or a plain checkpoint file on the store), ``weights_only=True``.

    ``weights_only=False`` unpickles any object (`dltrain.checkpoint.load`): for trusted files only.

    A sharded checkpoint returns its ``meta.pt`` with ``"sharded": True`` and ``"_shards"``: the parts URL that
    torch.distributed.checkpoint reads the model and optimizer shards from.
    """
    record = read_commit(url, storage_options)
    if record is None:  # a file uploaded as it is
        return _torch_load(_storage.read_bytes(url, storage_options), url, weights_only=weights_only)
    parts = check_complete(url, record, storage_options)
    if record.get("sharded"):
        meta = _torch_load(_storage.read_bytes(_storage.join(parts, "meta.pt"), storage_options), url, meta=True,
                           weights_only=weights_only)
        meta["sharded"] = True
        meta["_shards"] = parts
        return meta
    return _torch_load(_storage.read_bytes(_storage.join(parts, FILE_PART), storage_options), url,
                       weights_only=weights_only)


def _torch_load(data: bytes, url: str, meta: bool = False, weights_only: bool | None = None) -> dict[str, Any]:
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=weights_only is not False)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {_storage.redact(url)!r} cannot be read ({type(err).__name__}: {str(err)[:200]}); it is "
            "truncated or corrupt, or was not written by dltrain/torch.save. Pass ckpt_path='last' to use the newest "
            "complete one"
        ) from err
    key = "loops" if meta else "state_dict"
    if not isinstance(ckpt, dict) or key not in ckpt:
        raise CheckpointError(f"{_storage.redact(url)!r} is not a dltrain checkpoint (no {key!r} entry)")
    return ckpt


def is_loadable(url: str, storage_options: Options = None) -> bool:
    """Whether ``url`` is a complete checkpoint (a commit whose parts are all there, or a file that loads)."""
    try:
        record = read_commit(url, storage_options)
        if record is None:
            load(url, storage_options)
        else:
            check_complete(url, record, storage_options)
    except CheckpointError:
        return False
    return True


def checkpoints(folder: str, storage_options: Options = None) -> list[dict[str, Any]]:
    """The ``*.ckpt`` objects directly in ``folder`` (fsspec entries with ``url``)."""
    out = []
    for entry in _storage.listing(folder, storage_options):
        name = _storage.basename(entry["name"])
        if entry.get("type") != "directory" and name.endswith(".ckpt"):
            out.append({**entry, "url": _storage.join(folder, name), "basename": name})
    return out


def find_last(folder: str, storage_options: Options = None) -> str | None:
    """The newest complete checkpoint in ``folder``.

    Of the ``last*.ckpt`` commits the newest (by the time its commit records) whose parts are complete; else
    the highest step that is complete.
    """
    entries = checkpoints(folder, storage_options)
    lasts = []
    for e in entries:
        if _LAST_RE.match(e["basename"]):
            try:
                record = read_commit(e["url"], storage_options)
            except CheckpointError:
                continue
            lasts.append((record.get("saved_at", 0.0) if record else _mtime(e), e["url"]))
    for _, url in sorted(lasts, reverse=True):
        if is_loadable(url, storage_options):
            return url

    def step_of(e: dict[str, Any]) -> int:
        match = _STEP_RE.search(e["basename"])
        return int(match.group(1)) if match else -1

    others = sorted((e for e in entries if not _LAST_RE.match(e["basename"])), key=lambda e: (step_of(e), _mtime(e)))
    for e in reversed(others):
        if is_loadable(e["url"], storage_options):
            return str(e["url"])
    return None


def newest_write(folder: str, storage_options: Options = None) -> float | None:
    """When the newest ``*.ckpt`` in ``folder`` was written (None: none)."""
    times = [_mtime(e) for e in checkpoints(folder, storage_options)]
    return max(times) if times else None


def _mtime(entry: Mapping[str, Any]) -> float:
    modified = entry.get("LastModified") or entry.get("mtime") or entry.get("last_modified")
    if modified is None:
        return 0.0
    if isinstance(modified, (int, float)):
        return float(modified)
    return float(modified.timestamp())


def copy_commit(target: str, link: str, storage_options: Options = None) -> None:
    """Make ``link`` (``last.ckpt``) name the parts ``target`` names.

    Its commit, written again under ``link`` (one PUT: replaces the old ``link`` in one step).
    """
    record = read_commit(target, storage_options)
    if record is None:
        raise CheckpointError(f"{_storage.redact(target)!r} is not a commit object: cannot name it from {link!r}")
    if _storage.parent(target) != _storage.parent(link):
        raise CheckpointError(f"{link!r} and {target!r} must be in the same folder")
    write_commit(link, {**record, "saved_at": time.time()}, storage_options)


def parts_of(url: str, storage_options: Options = None) -> str | None:
    """The parts prefix (a URL) the commit ``url`` names; None if there is no commit there."""
    try:
        record = read_commit(url, storage_options)
    except CheckpointError:
        return None
    return parts_url(url, record) if record is not None else None


def remove(url: str, keep_parts: set[str], storage_options: Options = None) -> None:
    """Remove the checkpoint ``url``.

    Its commit object first (the checkpoint disappears in one step), then its parts unless another commit
    (``keep_parts``: the parts URLs still named, e.g. by ``last.ckpt``) names them.
    """
    parts = parts_of(url, storage_options)
    _storage.remove(url, storage_options)
    if parts is not None and parts not in keep_parts:
        _storage.remove(parts, storage_options, recursive=True)


def remove_parts(parts: str, storage_options: Options = None) -> None:
    _storage.remove(parts, storage_options, recursive=True)


def remove_stale_parts(folder: str, storage_options: Options = None) -> list[str]:
    """Remove the orphaned parts in ``folder/.parts``; returns what was removed.

    Orphaned: no commit in ``folder`` names them and their writer, a process of this host, is gone (a save killed
    before its commit). Parts of other hosts are left alone.
    """
    from dltrain.checkpoint import process_alive_since

    parts_folder = _storage.join(folder, PARTS_DIR)
    entries = _storage.listing(parts_folder, storage_options)
    if not entries:
        return []
    named = {parts_of(e["url"], storage_options) for e in checkpoints(folder, storage_options)}
    host, removed = socket.gethostname(), []
    for entry in entries:
        name = _storage.basename(entry["name"])
        url = _storage.join(parts_folder, name)
        match = _PARTS_RE.match(name)
        if url in named or match is None or match.group("host") != host:
            continue
        pid = int(match.group("pid"))
        if pid != os.getpid() and process_alive_since(pid, time.time()):
            continue
        _storage.remove(url, storage_options, recursive=True)
        removed.append(url)
    return removed
