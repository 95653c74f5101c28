"""`dltrain.FaultTolerant`'s specification, the lighthouse (in-process and ``dltrain lighthouse``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import dltrain
from dltrain.errors import ConfigurationError
from dltrain.strategies import FaultTolerant


def test_spec_reads_the_environment_and_checks_ranges():
    env = {"REPLICA_GROUP_ID": "1", "NUM_REPLICA_GROUPS": "3", "TORCHFT_LIGHTHOUSE": "http://h:1"}
    spec = dltrain.FaultTolerant(min_replicas=2).resolved(env)
    assert (spec.replica_group, spec.replica_groups, spec.lighthouse, spec.min_replicas) == (1, 3, "http://h:1", 2)
    given = FaultTolerant(replica_groups=2, replica_group=0, lighthouse="http://x:2").resolved({})
    assert (given.replica_group, given.replica_groups, given.lighthouse) == (0, 2, "http://x:2")
    with pytest.raises(ConfigurationError, match="REPLICA_GROUP_ID"):
        FaultTolerant().resolved({"NUM_REPLICA_GROUPS": "2", "TORCHFT_LIGHTHOUSE": "http://h:1"})
    with pytest.raises(ConfigurationError, match="TORCHFT_LIGHTHOUSE"):
        FaultTolerant().resolved({"NUM_REPLICA_GROUPS": "2", "REPLICA_GROUP_ID": "0"})
    with pytest.raises(ConfigurationError, match="numbered 0 to 1"):
        FaultTolerant().resolved({**env, "NUM_REPLICA_GROUPS": "2", "REPLICA_GROUP_ID": "2"})
    with pytest.raises(ConfigurationError, match="min_replicas=4"):
        FaultTolerant(min_replicas=4).resolved(env)
    with pytest.raises(ConfigurationError, match="not a whole number"):
        FaultTolerant().resolved({**env, "REPLICA_GROUP_ID": "one"})
    with pytest.raises(ConfigurationError, match="timeout"):
        FaultTolerant(timeout=0)


def test_lighthouse_in_process_and_its_command():
    pytest.importorskip("torchft")
    from dltrain.lighthouse import Lighthouse

    with Lighthouse(min_replicas=1, heartbeat_timeout=1.0) as lighthouse:
        assert lighthouse.address.startswith("http://")
    with pytest.raises(ConfigurationError, match="min_replicas"):
        Lighthouse(min_replicas=0)
    # The command prints the address to export, serves until SIGTERM and stops cleanly.
    proc = subprocess.Popen([sys.executable, "-m", "dltrain.cli", "lighthouse", "--min-replicas", "2", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "lighthouse at http://" in first and "export TORCHFT_LIGHTHOUSE=http://" in first, first
        assert "(min 2 replica groups)" in first
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "lighthouse stopped" in out, out
