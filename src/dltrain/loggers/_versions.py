"""Run folders ``<root>/version_<N>`` as Lightning's loggers name them: the next free number, claimed atomically."""

from __future__ import annotations

import os
import re

__all__ = ["claim_next_version", "next_version"]

_VERSION_RE = re.compile(r"^version_(\d+)$")


def next_version(root: str) -> int:
    """One more than the highest ``version_<N>`` folder in ``root`` (0 when there is none)."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return 0
    found = [int(m.group(1)) for n in names if (m := _VERSION_RE.match(n))]
    return max(found, default=-1) + 1


def claim_next_version(root: str) -> int:
    """Create ``root/version_<N>`` for the next free ``N`` and return ``N``.

    An exclusive ``mkdir``: two runs started at once get different versions.
    """
    os.makedirs(root, exist_ok=True)
    while True:
        candidate = next_version(root)
        try:
            os.mkdir(os.path.join(root, f"version_{candidate}"))
        except FileExistsError:
            continue
        return candidate
