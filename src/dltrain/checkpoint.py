"""Checkpoint files: atomic writes, safe loads, RNG states, and finding the newest complete checkpoint.

A checkpoint is a ``dict`` saved with ``torch.save`` and loaded with ``torch.load(weights_only=True)``: tensors,
numbers, strings, lists, tuples and dicts only, so loading a checkpoint never runs code from the file.

Layout (``FORMAT_VERSION`` 2; version 1 files load too) of a file::

    {"format": 2, "dltrain_version": str, "task_class": str, "hparams": dict,
     "state_dict": model weights, "optimizer_states": [state, ...], "lr_schedulers": [state, ...],
     "precision": state, "loops": dltrain.loop.LoopState.state_dict(), "callback_metrics": {name: float},
     "callbacks": {state_key: state}, "datamodule": state, "datamodule_hyper_parameters": dict,
     "loggers": [state, ...], "train_metrics": state,
     "ranks": [{"rng": ..., "train_loader": ...}, ...]   # one entry per rank, index = global rank
     "world_size": int}

Under ``strategy="fsdp2"`` a checkpoint is a directory instead: the model and optimizer shards of every rank
(``torch.distributed.checkpoint``: ``.metadata`` and ``__<rank>_<n>.distcp``, keys ``model.*`` and
``optimizer_<i>.*``) and ``meta.pt``, the dict above without ``state_dict`` and ``optimizer_states``. `load`
returns that dict (with ``"sharded": True``) after checking that every shard file is there; `consolidate` writes the
directory as one file of the layout above.

A path may be a URL of an object store (``s3://bucket/run/last.ckpt``, any fsspec URL): there a checkpoint is a
commit object naming its parts, written last (see ``dltrain._remote_checkpoint``). ``storage_options`` are passed to
fsspec for such URLs; credentials otherwise come from the environment, never from the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dltrain import _storage
from dltrain.errors import CheckpointError

FORMAT_VERSION = 2
StorageOptions = Mapping[str, Any] | None  # passed to fsspec for URLs
_STEP_RE = re.compile(r"step=(\d+)")


def save_atomic(obj: Any, path: str | os.PathLike[str], storage_options: StorageOptions = None) -> None:
    """Write ``obj`` to ``path`` so that ``path`` is either the old file or the complete new one, never partial.

    The data goes to a temporary file in the same folder, is flushed and fsynced, then renamed over ``path``;
    the folder is fsynced so that the rename itself survives a power loss. On an object store: the parts, then the
    commit object.
    """
    if _storage.is_remote(path):
        from dltrain import _remote_checkpoint

        _remote_checkpoint.save(obj, str(path), storage_options)
        return
    path = Path(_storage.local_path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_path(path.parent)


def link_atomic(target: str | os.PathLike[str], link: str | os.PathLike[str],
                storage_options: StorageOptions = None) -> None:
    """Make ``link`` name the same file as ``target``, replacing ``link`` atomically.

    A hard link, a copy where links are not supported; for a sharded checkpoint directory, a symbolic link; on an
    object store, a second commit object naming the same parts. ``link`` always names a complete checkpoint.
    """
    if _storage.is_remote(target):
        from dltrain import _remote_checkpoint

        _remote_checkpoint.copy_commit(str(target), str(link), storage_options)
        return
    target, link = Path(target), Path(link)
    if target.is_dir():  # a sharded checkpoint: a directory cannot be hard-linked
        from dltrain import _sharded

        _sharded.link_atomic(target, link)
        return
    tmp = _temporary(link)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(target, tmp)
    except OSError:
        import shutil

        shutil.copyfile(target, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, link)
    fsync_path(link.parent)


def _temporary(path: Path) -> Path:
    """The temporary name ``path`` is written under.

    Hidden, naming this host and process (see :func:`remove_stale_temporaries`).
    """
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


# ".<name>.tmp-<host>-<pid>"; files of older versions have no host: ".<name>.tmp-<pid>".
_TEMPORARY_RE = re.compile(r"^\.(?P<name>.+\.ckpt)\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)$")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that processes killed while writing a checkpoint left in ``folder``.

    A temporary is stale when the process that wrote it is gone: it was written on this host and its process id
    is not running, or is running but started after the file was last written (the id was reused), or is this
    very process (which is not writing at this moment). Temporaries of other hosts (a shared file system) are left
    alone: whether their writer is alive cannot be known from here. Returns the removed paths.
    """
    folder = Path(folder)
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    host = socket.gethostname()
    removed = _remove_unlinked_directories(entries)
    for p in entries:
        match = _TEMPORARY_RE.match(p.name)
        if match is None or match.group("host") not in (None, host):
            continue
        pid = int(match.group("pid"))
        try:
            written = p.stat().st_mtime
        except FileNotFoundError:
            continue
        if pid != os.getpid() and process_alive_since(pid, written):
            continue
        with contextlib.suppress(FileNotFoundError):
            if p.is_dir() and not p.is_symlink():  # a sharded checkpoint's directory
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


# ".<name>.d-<12 hex>": a sharded checkpoint that replaced an existing name, reached through the link <name>.
_LINKED_RE = re.compile(r"^\.(?P<name>.+\.ckpt)\.d-[0-9a-f]{12}$")


def _remove_unlinked_directories(entries: list[Path]) -> list[Path]:
    """The hidden directories of sharded checkpoints that no link in the folder names any more.

    They are left by a process killed between renaming one into place and pointing its link at it.
    """
    linked = {os.readlink(p) for p in entries if p.is_symlink()}
    removed = []
    for p in entries:
        if _LINKED_RE.match(p.name) and p.name not in linked and p.is_dir() and not p.is_symlink():
            import shutil

            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def process_alive_since(pid: int, written: float) -> bool:
    """Whether process ``pid`` is running and may have written a file at time ``written`` (it started before)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # running, as another user
    except OSError:
        return True  # cannot tell: keep the file
    started = _process_start_time(pid)
    return started is None or started <= written + 1.0


def _process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from ``/proc`` on Linux; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def fsync_path(path: Path) -> None:
    """Fsync a file or a folder (a folder: so that the renames in it survive a power loss); best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | os.PathLike[str], storage_options: StorageOptions = None,
         weights_only: bool | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``, onto the CPU); ``path`` may be a URL of an object store.

    A sharded checkpoint returns its metadata with ``"sharded": True`` and ``"_shards"``: where its shards are.

    ``weights_only=False`` (the Trainer's argument, Lightning's meaning) unpickles any object: only for a trusted
    file that holds more than tensors and plain types.

    Raises:
        CheckpointError: the file is missing, truncated or not a dltrain checkpoint.
    """
    if _storage.is_remote(path):
        from dltrain import _remote_checkpoint

        return _remote_checkpoint.load(str(path), storage_options, weights_only)
    path = Path(_storage.local_path(path))
    if path.is_dir():  # a sharded checkpoint: its metadata (the shards are read into a live model)
        from dltrain import _sharded

        return _sharded.load_metadata(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=weights_only is not False)
    except Exception as err:
        others = [str(p) for p in sorted(path.parent.glob("*.ckpt")) if p.resolve() != path.resolve()]
        hint = f" Other checkpoints in that folder: {', '.join(others)}." if others else ""
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {str(err)[:200]}); it is truncated or "
            f"corrupt, or was not written by dltrain/torch.save.{hint} Pass ckpt_path='last' to use the newest "
            "complete one."
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{str(path)!r} is not a dltrain checkpoint (no 'state_dict' entry)")
    return ckpt


def is_loadable(path: str | os.PathLike[str], storage_options: StorageOptions = None) -> bool:
    """Whether ``path`` is a checkpoint that `load` reads (complete, not damaged; on a store: a complete commit)."""
    if _storage.is_remote(path):
        from dltrain import _remote_checkpoint

        return _remote_checkpoint.is_loadable(str(path), storage_options)
    try:
        load(path)
    except CheckpointError:
        return False
    return True


def find_last(folder: str | os.PathLike[str], storage_options: StorageOptions = None) -> Path | str | None:
    """The newest complete checkpoint in ``folder``.

    The newest ``last.ckpt`` (or ``last-v<N>.ckpt``, written when another run's ``last.ckpt`` was already
    there) that loads, else the highest step that loads. A URL folder gives a URL (read from its commit objects
    only).
    """
    if _storage.is_remote(folder):
        from dltrain import _remote_checkpoint

        return _remote_checkpoint.find_last(str(folder), storage_options)
    folder = Path(folder)
    if not folder.is_dir():
        return None
    lasts = sorted((p for p in folder.glob("last*.ckpt") if _LAST_RE.match(p.name)), key=_mtime, reverse=True)
    for last in lasts:
        if is_loadable(last):
            return last

    def step_of(p: Path) -> int:
        match = _STEP_RE.search(p.name)
        return int(match.group(1)) if match else -1

    candidates = sorted(
        (p for p in folder.glob("*.ckpt") if not _LAST_RE.match(p.name)), key=lambda p: (step_of(p), _mtime(p))
    )
    for p in reversed(candidates):
        if is_loadable(p):
            return p
    return None


def find_newest_last(folders: Iterable[str | os.PathLike[str]],
                     storage_options: StorageOptions = None) -> Path | str | None:
    """The newest complete checkpoint in any of ``folders``.

    That is `find_last` of the folder whose checkpoints were written most recently, or of an older folder when
    that one holds none that loads.
    """
    newest: list[tuple[float, Path | str]] = []
    unique: dict[Path | str, None] = dict.fromkeys(
        str(f) if _storage.is_remote(f) else Path(_storage.local_path(f)) for f in folders)
    for folder in unique:
        if isinstance(folder, str):
            from dltrain import _remote_checkpoint

            written = _remote_checkpoint.newest_write(folder, storage_options)
            if written is not None:
                newest.append((written, folder))
            continue
        times = [_mtime(p) for p in folder.glob("*.ckpt")] if folder.is_dir() else []
        if times:
            newest.append((max(times), folder))
    for _, folder in sorted(newest, key=lambda tf: tf[0], reverse=True):
        found = find_last(folder, storage_options)
        if found is not None:
            return found
    return None


_LAST_RE = re.compile(r"^last(-v\d+)?\.ckpt$")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return -math.inf


def consolidate(path: str | os.PathLike[str], out: str | os.PathLike[str],
                storage_options: StorageOptions = None) -> Path | str:
    """Write the sharded checkpoint ``path`` as one full dltrain ``.ckpt`` file ``out``.

    ``path`` is a directory, or its commit on an object store; either may be a URL. Runs in one process, with no
    process group: ``state_dict`` holds the whole model, ``optimizer_states`` the optimizers' states keyed by
    parameter name. ``Task.load_from_checkpoint(out)`` and ``validate/test/predict(ckpt_path=out)`` read it.
    """
    import shutil
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    if not _storage.is_remote(path) and not Path(_storage.local_path(path)).is_dir():
        raise CheckpointError(f"{str(path)!r} is not a sharded checkpoint directory (nothing to consolidate)")
    meta = load(path, storage_options)
    if not meta.get("sharded"):
        raise CheckpointError(f"{_storage.redact(str(path))!r} is not a sharded checkpoint (nothing to consolidate)")
    shards = str(meta.pop("_shards"))
    meta.pop("sharded", None)
    remote_out = _storage.is_remote(out)
    target: Path | str = str(out) if remote_out else Path(_storage.local_path(out))
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".consolidate-", dir=None if remote_out else str(Path(target).parent)))
    try:
        if _storage.is_remote(shards):  # DCP's own reader of a directory: the parts, downloaded
            fs = _storage.filesystem(shards, storage_options)
            _storage.retry(lambda: fs.get(shards.rstrip("/") + "/", str(scratch / "shards") + "/", recursive=True),
                           shards)
            shards = str(scratch / "shards")
        dcp_to_torch_save(shards, str(scratch / "full.pt"))
        full = torch.load(scratch / "full.pt", map_location="cpu", weights_only=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    meta["state_dict"] = full.pop("model")
    optimizers = sorted((k for k in full if k.startswith("optimizer_")), key=lambda k: int(k.split("_")[1]))
    if optimizers:
        meta["optimizer_states"] = [full[k] for k in optimizers]
    save_atomic(meta, target, storage_options)
    return target


# ---------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """This process's RNG states: Python, NumPy, torch CPU and every CUDA device (weights_only-safe types)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters reduced to types that load with ``weights_only=True`` (others become their ``repr``)."""

    def plain(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return repr(v)

    return {str(k): plain(v) for k, v in hparams.items()}


def build_from_hparams(cls: type, stored: Mapping[str, Any], kwargs: Mapping[str, Any],
                       hparams_file: str | os.PathLike[str] | None, what: str) -> Any:
    """``cls`` built from saved hyperparameters, as Lightning's ``load_from_checkpoint`` builds a class.

    ``hparams_file`` (YAML, e.g. a logger's ``hparams.yaml``) replaces ``stored``; ``kwargs`` override both. Names
    that ``cls.__init__`` does not take are left out, unless it takes ``**kwargs`` (a logger's file holds the task's
    and the datamodule's hyperparameters together).

    Raises:
        CheckpointError: they do not build ``cls`` (naming ``what`` was read and the names given).
    """
    import inspect

    if hparams_file is not None:
        import yaml

        with open(hparams_file, encoding="utf-8") as f:
            stored = yaml.safe_load(f) or {}
    hparams = {**stored, **kwargs}
    parameters = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        hparams = {k: v for k, v in hparams.items() if k in parameters}
    try:
        return cls(**hparams)
    except TypeError as err:
        raise CheckpointError(
            f"cannot build {cls.__name__} from {what} ({sorted(hparams)}): {err}. Pass the missing or non-plain "
            "ones as keyword arguments"
        ) from err


def check_state_dict(model: torch.nn.Module, state_dict: dict[str, Any], path: str) -> None:
    """Raise a CheckpointError naming missing/unexpected keys and shape mismatches before loading."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict
        and isinstance(state_dict[k], torch.Tensor)
        and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:10]}")
        raise CheckpointError(
            f"checkpoint {path!r} does not match {type(model).__name__}: {'; '.join(parts)}. Was it written by a "
            "different model or configuration?"
        )
