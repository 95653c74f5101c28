"""tests/helpers/distributed.run_distributed: when the test is interrupted while it waits (pytest-timeout's
signal, Ctrl-C), the launched ranks are killed with it instead of running on as orphans (they did: a full-suite
run on a loaded machine left FSDP2 ranks training after their tests had timed out)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed
from tests.helpers.forklaunch import alive

pytestmark = pytest.mark.distributed

SCRIPT = """
import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(300)
"""


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("launcher", ["torchrun", "auto"])
def test_an_interrupted_wait_kills_the_ranks(tmp_path: Path, launcher: str) -> None:
    script, pidfile = tmp_path / "sleeper.py", tmp_path / "rank.pid"
    script.write_text(SCRIPT)

    def interrupt(signum, frame):  # as pytest-timeout does, once the rank is running
        if not pidfile.exists() or not pidfile.read_text():
            signal.alarm(1)
            return
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(1)
    try:
        with pytest.raises(Interrupted):
            run_distributed(script, [str(pidfile)], nproc=1, timeout=240, launcher=launcher)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"rank {pid} still ran 30 s after the interrupted test")


ORPHAN = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork():
        os._exit(0)
    # A grandchild whose parent is gone: no descendant of torchrun, yet it holds torchrun's output pipe.
    open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(300)
    os._exit(0)
"""


@pytest.mark.timeout(150)
def test_an_orphan_holding_the_output_is_named_and_killed(tmp_path: Path) -> None:
    """A launch that ends while an orphan it left keeps its output open: a clear failure, not a wait for good."""
    script, pidfile = tmp_path / "orphan.py", tmp_path / "orphan.pid"
    script.write_text(ORPHAN)
    with pytest.raises(AssertionError, match=r"did not finish within 12s.*\n  orphan \d+ held the output pipe"):
        run_distributed(script, [str(pidfile)], nproc=1, timeout=12, launcher="torchrun")
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), f"the orphan {pid} still runs"
