"""Launch the replica groups of a fault-tolerant run (one torchrun each, ``--max-restarts``) from a test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tests.helpers.distributed import REPO, _descendants


def run_replica_groups(script: str | Path, args: Sequence[str], *, groups: int, nproc: int, lighthouse: str,
                       timeout: float, max_restarts: int = 1, env: dict[str, str] | None = None,
                       check: bool = True) -> list[str]:
    """Run ``groups`` torchruns of ``script`` concurrently (REPLICA_GROUP_ID=0..groups-1), each ``nproc``
    processes; return each group's output. Raises AssertionError with every group's output when one fails
    (unless ``check=False``) or the whole does not finish within ``timeout`` seconds (then naming the groups
    still running)."""
    base_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {}),
                "NUM_REPLICA_GROUPS": str(groups), "TORCHFT_LIGHTHOUSE": lighthouse}
    base_env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), base_env.get("PYTHONPATH", "")])
    procs = []
    for g in range(groups):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
               f"--max-restarts={max_restarts}", "--monitor-interval=0.5", str(script), *args]
        procs.append(subprocess.Popen(cmd, env={**base_env, "REPLICA_GROUP_ID": str(g)}, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True))
    outputs = [""] * groups

    def drain(i: int) -> None:
        assert procs[i].stdout is not None
        outputs[i] = procs[i].stdout.read()

    readers = [threading.Thread(target=drain, args=(i,), daemon=True) for i in range(groups)]
    for r in readers:
        r.start()
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        running = [g for g, p in enumerate(procs) if p.poll() is None]
        _kill(procs)
        for r in readers:
            r.join(10)
        raise AssertionError(f"replica groups {running} did not finish within {timeout:.0f} s (hang?):\n"
                             + _tails(procs, outputs)) from None
    except BaseException:
        _kill(procs)
        raise
    for r in readers:
        r.join(30)
    if check and any(p.returncode for p in procs):
        raise AssertionError(f"{script} {' '.join(args)}: a replica group failed:\n" + _tails(procs, outputs))
    return outputs


def _kill(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        for pid in [p.pid, *_descendants(p.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _tails(procs: list[subprocess.Popen[str]], outputs: list[str]) -> str:
    return "\n".join(f"--- replica group {g} (exit {p.returncode}), last lines:\n{out[-6000:]}"
                     for g, (p, out) in enumerate(zip(procs, outputs)))
