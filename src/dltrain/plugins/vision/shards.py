"""Build image-classification shards from the usual ``root/<class_name>/<image>`` folder layout."""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dltrain.errors import DataError

__all__ = ["find_images", "write_image_shards"]

#: Image file suffixes picked up from folders, and the shard field each is stored under.
_SUFFIX_FIELD = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp", ".gif": "gif", ".bmp": "bmp",
                 ".tif": "tiff", ".tiff": "tiff"}


def find_images(root: str | Path, classes: Sequence[str] | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """List ``(path, class_index)`` under ``root/<class_name>/`` (searched recursively) and the class names.

    Args:
        root: the folder holding one sub-folder per class.
        classes: class names in index order; default: the sub-folder names, sorted (as torchvision's ImageFolder).
            Pass the training split's classes when building the validation split, so the indices agree.

    Raises:
        DataError: ``root`` has no class folders, or a named class has no folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = names
        if not classes:
            raise DataError(f"{str(root)!r} has no class sub-folders; expected root/<class_name>/<image>.jpg")
    else:
        missing = sorted(set(classes) - set(names))
        if missing:
            raise DataError(f"{str(root)!r} has no folder for classes {missing[:5]}")
    items: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        for dirpath, _dirs, files in os.walk(root / name):
            items += [(Path(dirpath) / f, index) for f in sorted(files) if Path(f).suffix.lower() in _SUFFIX_FIELD]
    return items, list(classes)


def _key(path: Path, root: Path) -> str:
    # webdataset splits member names at the first dot, so the key must not contain one.
    rel = path.relative_to(root).as_posix()  # suffix kept: 'a.jpg' and 'a.png' stay two samples
    return re.sub(r"[^A-Za-z0-9_\-/]", "_", rel).replace("/", "__")


def write_image_shards(
    root: str | Path,
    pattern: str,
    *,
    classes: Sequence[str] | None = None,
    max_count: int = 1000,
    max_size: float = 256e6,
    shuffle: bool = True,
    seed: int = 0,
) -> list[str]:
    """Turn ``root/<class_name>/<image>`` into shards, their index and a ``classes.json`` next to them.

    The images keep their original bytes (no re-encoding).

    Each sample is ``{"__key__": "<class>__<file name>", "<jpg|png|webp|...>": bytes, "cls": index}``.

    Args:
        root: the image folder.
        pattern: printf-style shard path, e.g. ``"shards/train-%06d.tar"``.
        classes: class names in index order (default: sorted folder names).
        max_count: samples per shard at most.
        max_size: bytes per shard at most.
        shuffle: shuffle the samples across shards (the streaming loader shuffles shards and within a buffer,
            so class-sorted shards would give class-sorted batches).
        seed: shuffle seed.

    Returns:
        The shard paths.

    Example:
        >>> write_image_shards("images/train", "shards/train-%06d.tar")  # images/train/<class>/*.png
        ['shards/train-000000.tar']
    """
    from dltrain.data import write_shards

    items, names = find_images(root, classes)
    if not items:
        raise DataError(f"no images ({', '.join(sorted(set(_SUFFIX_FIELD)))}) under {str(root)!r}")
    if shuffle:
        random.Random(seed).shuffle(items)
    root_path = Path(root)

    def samples() -> Iterator[dict[str, Any]]:
        for path, index in items:
            yield {"__key__": _key(path, root_path), _SUFFIX_FIELD[path.suffix.lower()]: path.read_bytes(),
                   "cls": index}

    paths = write_shards(samples(), pattern, max_count=max_count, max_size=max_size)
    out_dir = Path(pattern).parent
    (out_dir / "classes.json").write_text(json.dumps(names, indent=1) + "\n")
    return paths
