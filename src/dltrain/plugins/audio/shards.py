"""Build audio shards from the usual on-disk layout: one folder per class."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dltrain.errors import DataError

from .io import AUDIO_EXTENSIONS

__all__ = ["write_audio_shards"]


def write_audio_shards(
    root: str | Path,
    pattern: str,
    *,
    classes: Sequence[str] | None = None,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    **kwargs: Any,
) -> list[str]:
    """Write ``root/<class>/<name>.<flac|wav|ogg>`` files into shards (and their index).

    Each sample is ``{"__key__": "<class>/<name>", "<ext>": file bytes, "cls": class index}``; the file bytes
    are stored as they are (no re-encoding). Classes are the sub-folder names, sorted, unless given. The class
    names are also written to ``classes.json`` next to the shards.

    Args:
        root: folder with one sub-folder per class.
        pattern: shard file pattern, for example ``"shards/train-%06d.tar"``.
        classes: class names in index order (default: sorted sub-folder names).
        extensions: file extensions to include.
        kwargs: passed to :func:`dltrain.data.write_shards` (``max_count``, ``max_size``).

    Returns:
        The shard paths written.

    Example:
        >>> write_audio_shards("audio/train", "shards/train-%06d.tar", max_count=2000)  # audio/train/<class>/*.flac
        ['shards/train-000000.tar']
    """
    from dltrain.data import write_shards

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; expected one sub-folder of audio files per class")
    names = list(classes) if classes is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise DataError(f"{root} has no class sub-folders")
    exts = {e.lower().lstrip(".") for e in extensions}

    def samples() -> Iterator[dict[str, Any]]:
        for index, name in enumerate(names):
            for path in sorted((root / name).rglob("*")):
                ext = path.suffix.lower().lstrip(".")
                if path.is_file() and ext in exts:
                    # webdataset splits a tar member name at the first dot of its base name: keep dots out of keys.
                    key = path.relative_to(root).with_suffix("").as_posix().replace(".", "_")
                    yield {"__key__": key, ext: path.read_bytes(), "cls": index}

    urls = write_shards(samples(), pattern, **kwargs)
    if urls:
        (Path(urls[0]).parent / "classes.json").write_text(json.dumps(names))
    return urls
