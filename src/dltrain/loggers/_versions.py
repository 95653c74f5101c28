"""Run folders ``<root>/version_<N>`` as Lightning's loggers name them: the next free number, claimed atomically
on a local disk. ``root`` may be a URL of an object store (``s3://bucket/runs/name``): its "folders" are key
prefixes, listed fresh; nothing can be claimed there (no exclusive create), so two runs that start at the same
moment under one store prefix may pick the same number (give them different ``name``s or ``version``s)."""

from __future__ import annotations

import os
import re

from dltrain import _storage

__all__ = ["claim_next_version", "next_version"]

_VERSION_RE = re.compile(r"^version_(\d+)$")


def next_version(root: str) -> int:
    """One more than the highest ``version_<N>`` folder in ``root`` (0 when there is none)."""
    if _storage.is_remote(root):
        names = [_storage.basename(e["name"]) for e in _storage.listing(root)]
    else:
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            return 0
    found = [int(m.group(1)) for n in names if (m := _VERSION_RE.match(n))]
    return max(found, default=-1) + 1


def claim_next_version(root: str) -> int:
    """Create ``root/version_<N>`` for the next free ``N`` and return ``N``.

    An exclusive ``mkdir``: two runs started at once get different versions. On an object store nothing is
    created (a prefix exists once an object is written under it): the next free number.
    """
    if _storage.is_remote(root):
        return next_version(root)
    os.makedirs(root, exist_ok=True)
    while True:
        candidate = next_version(root)
        try:
            os.mkdir(os.path.join(root, f"version_{candidate}"))
        except FileExistsError:
            continue
        return candidate
