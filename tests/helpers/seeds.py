"""One seed convention for every randomized test: ``DLTRAIN_TEST_SEED``.

A session's base seed is ``DLTRAIN_TEST_SEED`` when set, otherwise drawn from the OS once (by the pytest process
that starts first: the xdist controller, whose workers inherit it through the environment). A randomized test
never uses the base seed itself: it derives its own from the base and a name of its own, ``seed_for(__name__)``
at module level or the ``random_seed`` fixture (keyed by the test's id), so a test draws the same values whatever else
the session runs, in whichever worker. A failing randomized test gets a ``replay`` section in its report and a
line in the session summary: ``DLTRAIN_TEST_SEED=<base> scripts/test <test id>``.

``scripts/test -m randomized`` runs every randomized test (each with a new seed).
"""

from __future__ import annotations

import hashlib
import os
import secrets

ENV = "DLTRAIN_TEST_SEED"

#: Names (module names or test ids) that derived a seed in this process: their tests are "randomized".
used: set[str] = set()


def base_seed() -> int:
    """The session's base seed: ``DLTRAIN_TEST_SEED``, drawn (and exported, for workers) when unset."""
    value = os.environ.get(ENV)
    if value is None or not value.strip():
        value = str(secrets.randbelow(10**6))
        os.environ[ENV] = value  # xdist workers and every later call in this process see the same base
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{ENV} must be an integer, not {value!r}") from None


def seed_for(name: str, *parts: object) -> int:
    """A seed in ``[0, 2**31)`` for ``name`` (a module's ``__name__`` or a test id) and optional ``parts``,
    derived from the session's base seed; the same arguments and base give the same seed in every process."""
    used.add(name)
    digest = hashlib.blake2b(repr((base_seed(), name, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31


def replay_command(test_id: str) -> str:
    """The command that runs ``test_id`` again with this session's seeds."""
    quoted = f"'{test_id}'" if any(c in test_id for c in "[] ") else test_id
    return f"{ENV}={base_seed()} scripts/test {quoted}"
