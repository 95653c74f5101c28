"""Run folders ``<root>/version_<N>`` as Lightning's loggers name them.

The next free number, claimed atomically on a local disk. ``root`` may be a URL of an object store
(``s3://bucket/runs/name``): its "folders" are key prefixes, listed fresh, claimed by a conditional PUT of a
marker object (on stores without one, two runs that start at the same moment may pick the same number: give
them different ``name``s or ``version``s).
"""

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

    An exclusive ``mkdir``: two runs started at once get different versions. On an object store (a prefix exists
    once an object is written under it) the marker object ``version_<N>/.dltrain-run``, written with a conditional
    PUT (`dltrain._storage.create`), which only one run wins on S3.
    """
    if _storage.is_remote(root):
        while True:
            candidate = next_version(root)
            if _storage.create(_storage.join(root, f"version_{candidate}", ".dltrain-run"), b""):
                return candidate
    os.makedirs(root, exist_ok=True)
    while True:
        candidate = next_version(root)
        try:
            os.mkdir(os.path.join(root, f"version_{candidate}"))
        except FileExistsError:
            continue
        return candidate
