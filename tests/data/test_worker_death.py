"""Loader workers end with the process that started them, even when it is killed with SIGKILL.

torch's workers notice a dead parent only between two batches (a 5 s watchdog): a worker busy in a slow read or a
slow ``map`` when its training process is killed (``kill -9``, the OOM killer) goes on as an orphan, holding its
memory and the launcher's output pipe, so that a job step that should have ended waits for it. The suite hung
that way once (a killed launch's orphan kept ``torchrun``'s stdout open for good). A `StreamingDataLoader`'s
workers ask Linux to kill them with their parent (``PR_SET_PDEATHSIG``) when the parent started them from its
main thread; this test kills a training process whose two workers are each inside a ``map`` that sleeps for
minutes, and expects both gone within seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.forklaunch import alive
from tests.helpers.shards import make_shards

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, sys, time
from dltrain.data import StreamingDataset

pids = sys.argv[2]

def slow(sample):
    # Each worker says where it is, then stays inside this map for minutes.
    with open(os.path.join(pids, str(os.getpid())), "w") as f:
        f.write("in map")
    time.sleep(600)
    return sample["__key__"]

loader = StreamingDataset(sys.argv[1], batch_size=2, map=slow, shuffle=False).loader(num_workers=2)
next(iter(loader))  # waits for the first batch forever: the test kills this process first
"""


def test_workers_die_with_a_killed_training_process(tmp_path):
    shards = make_shards(tmp_path / "shards")
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, shards.pattern, str(pids)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            workers = sorted(int(p.name) for p in pids.iterdir())
        assert len(workers) == 2, f"the two workers did not reach their map (exit code {proc.poll()})"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in workers if alive(pid)]
        assert not left, f"loader workers {left} outlived their killed training process (orphans)"
    finally:
        proc.kill()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
