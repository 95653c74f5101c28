"""Launch the ranks of a test's distributed script as torchrun would, without paying their imports every time.

Why: on the 2-core test machine a rank spends ~4.5 s of CPU importing torch, torchmetrics, torchvision and scipy
before it does anything (Lightning Fabric imports torchmetrics, which imports the other two), torchrun's agent
~2 s more, and the suite starts hundreds of ranks. Here a few *rank servers* per test process import those
libraries once; each rank of a launch is forked from one of them and runs the script as ``__main__``.

What a rank sees is what a torchrun worker sees:
- the environment torchrun gives its workers (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``PORT``,
  ``TORCHELASTIC_RUN_ID``, ...), its argv, working directory and ``sys.path[0]``; a session of its own;
- the state of an interpreter that has just imported those libraries, made per-process again where a fresh
  interpreter would differ: ``random`` and numpy's global generator reseeded from the OS; the rank that
  torchmetrics' ``rank_zero_only`` records at import (``LOCAL_RANK``) set to this rank's; and the ranks of one launch forked from
  *different* servers, each started with its own ``PYTHONHASHSEED``, so that code which iterates a set in an
  order that differs between processes still disagrees between ranks as it would under torchrun;
- a normal interpreter exit (atexit handlers and thread joins run).
Nothing of Lightning or dltrain is imported by the servers (Lightning reads the rank from the environment at
import), nor anything else that reads the environment at import; a launch whose environment differs from the
servers' in what is read at interpreter start (``PYTHONPATH``, thread counts, ...) goes to torchrun instead.

The launch behaves as torchrun's does when a rank fails: the other ranks get SIGTERM, then SIGKILL 30 s later,
and the launch exits 1. All ranks write to one output file, which the launch returns as its stdout.
Set ``DLTRAIN_TEST_LAUNCHER=torchrun`` to run every launch under torchrun itself; tests about torchrun (restarts,
elastic sizes, several nodes, signals sent to the agent) always use it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

from tests.helpers.forkserver import RUN_AS_MAIN

# Imported once by every server: the expensive libraries that read nothing of torchrun's environment at import.
PRELOAD = ("torch", "torch.distributed", "numpy", "torchmetrics", "torchvision", "scipy.signal")
# Rank r of a launch comes from server r % 4: up to 4 ranks, each with a hash seed of its own. A server holds
# ~450 MB of its own memory (measured: Private_Dirty in /proc/<pid>/smaps_rollup), so 4 per pytest worker.
SERVERS = 4
# Read when an interpreter starts or when the preloaded libraries are imported: a launch that sets them otherwise
# than the servers' environment cannot be forked from them.
START_KEYS = ("PYTHONPATH", "PYTHONHASHSEED", "PYTHONHOME", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "CUDA_VISIBLE_DEVICES", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONWARNINGS")
TERM_GRACE = 30.0  # torchrun's wait between SIGTERM and SIGKILL of the surviving ranks

_SERVER = RUN_AS_MAIN + r"""
import json, random, signal
for name in sys.argv[1:]:
    __import__(name)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the supervisors are reaped by the kernel


def rank(job):
    os.setsid()  # torchrun starts each worker in a session of its own
    os.environ.clear()
    os.environ.update(job["env"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    out = os.open(job["output"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    # What differs between fresh interpreters: the generators seeded at import, the rank torchmetrics recorded.
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    prints = sys.modules.get("torchmetrics.utilities.prints")  # its rank_zero_only takes LOCAL_RANK at import
    if prints is not None:
        prints.rank_zero_only.rank = int(job["env"].get("LOCAL_RANK", "0"))
    # Out of the server's loop: the interpreter exits as a script's would (atexit handlers, thread joins).
    raise SystemExit(run_as_main(job))


print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    r, w = os.pipe()
    if os.fork() == 0:  # the supervisor: forks the rank, waits for it, writes its exit code
        os.close(r)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        pid = os.fork()
        if pid == 0:
            os.close(w)
            rank(job)
        os.write(w, f"{pid}\n".encode())
        os.close(w)
        _, status = os.waitpid(pid, 0)
        with open(job["rc"] + ".tmp", "w") as f:
            f.write(str(os.waitstatus_to_exitcode(status)))
        os.rename(job["rc"] + ".tmp", job["rc"])
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        pid = int(f.read().strip())
    print(json.dumps({"pid": pid}), flush=True)
"""


class _Server:
    """One rank server: a process that imported `PRELOAD` and forks ranks on request."""

    def __init__(self, env: Mapping[str, str], hash_seed: int) -> None:
        self.env = {**env, "PYTHONHASHSEED": str(hash_seed)}
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, *PRELOAD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=self.env, text=True,
                                     start_new_session=True)
        self.lock = threading.Lock()
        self._read()  # ready

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"a rank server died (exit code {self.proc.poll()})")
        return json.loads(line)

    def fork(self, job: Mapping[str, object]) -> int:
        assert self.proc.stdin is not None
        with self.lock:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            return int(self._read()["pid"])

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class RankServers:
    """The servers of this test process, started at the first launch that uses them."""

    def __init__(self) -> None:
        self._servers: list[_Server] = []
        self._env: dict[str, str] | None = None
        self._lock = threading.Lock()

    def get(self, env: Mapping[str, str]) -> list[_Server] | None:
        """The servers for a launch with ``env``; None when such a launch cannot be forked from them."""
        with self._lock:
            if self._env is None:
                self._env = dict(env)
                seeds = random.Random().sample(range(1, 2**31), SERVERS)
                self._servers = [_Server(env, seed) for seed in seeds]
                atexit.register(self.close)
            if any(env.get(k) != self._env.get(k) for k in START_KEYS):
                return None
            return self._servers

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []


SERVERS_OF_THIS_PROCESS = RankServers()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: exists and is not a zombie (a killed process whose parent has not reaped it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_session(pid: int) -> None:
    """The rank and what it started (its loader workers): its session's process group."""
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill()


def fork_launch(script: str | Path, args: Sequence[str], *, nproc: int, env: Mapping[str, str],
                timeout: float) -> subprocess.CompletedProcess[str] | None:
    """Run ``script`` on ``nproc`` forked ranks (see the module docstring); None where torchrun must run it."""
    servers = SERVERS_OF_THIS_PROCESS.get(env)
    if servers is None:
        return None
    work = Path(tempfile.mkdtemp(prefix="forklaunch-"))
    output = work / "output.txt"
    output.touch()
    # As torchrun's agent: the launch hosts the store that the ranks rendezvous through (it outlives any rank).
    import torch.distributed

    store = torch.distributed.TCPStore("localhost", 0, nproc, True, timedelta(seconds=timeout), wait_for_workers=False)
    common = {"MASTER_ADDR": "localhost", "MASTER_PORT": str(store.port), "WORLD_SIZE": str(nproc),
              "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": "0", "GROUP_WORLD_SIZE": "1", "ROLE_NAME": "default",
              "ROLE_WORLD_SIZE": str(nproc), "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
              "TORCHELASTIC_RUN_ID": uuid.uuid4().hex, "TORCHELASTIC_USE_AGENT_STORE": "True",
              "TORCH_NCCL_ASYNC_ERROR_HANDLING": env.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")}
    pids: list[int] = []
    codes: dict[int, int] = {}
    failed: tuple[int, int] | None = None
    try:
        for rank in range(nproc):
            rank_env = {**env, **common, "RANK": str(rank), "LOCAL_RANK": str(rank), "ROLE_RANK": str(rank)}
            job = {"script": str(script), "args": [str(a) for a in args], "cwd": os.getcwd(), "env": rank_env,
                   "output": str(output), "rc": str(work / f"rc{rank}")}
            pids.append(servers[rank % len(servers)].fork(job))
        deadline = time.monotonic() + timeout
        term_deadline: float | None = None
        while len(codes) < nproc:
            for rank in range(nproc):
                rc = work / f"rc{rank}"
                if rank not in codes and rc.exists():
                    codes[rank] = int(rc.read_text())
                    if codes[rank] != 0 and failed is None:
                        # As torchrun's agent: the first failure stops the other ranks.
                        failed = (rank, codes[rank])
                        for other, pid in enumerate(pids):
                            if other not in codes:
                                with contextlib.suppress(ProcessLookupError):
                                    os.kill(pid, signal.SIGTERM)
                        term_deadline = time.monotonic() + TERM_GRACE
            now = time.monotonic()
            if term_deadline is not None and now > term_deadline:
                for pid in pids:
                    _kill_session(pid)
                term_deadline = None
            if now > deadline:
                for pid in pids:
                    _kill_session(pid)
                raise AssertionError(f"{script} did not finish within {timeout}s (hang?), forked ranks {pids}, "
                                     f"finished {codes}:\n{output.read_text()}")
            time.sleep(0.02)
    except BaseException:
        for pid in pids:  # pytest-timeout's failure, Ctrl-C, a hang: no rank may run on
            _kill_session(pid)
        raise
    finally:
        # A rank's loader workers die with it (PR_SET_PDEATHSIG); whatever else a rank left in its session goes too.
        for pid in pids:
            if alive(pid):
                _kill_session(pid)
    del store
    text = output.read_text()
    if failed is not None:
        text += f"\n[fork launcher] rank {failed[0]} failed first (exit code {failed[1]}); exit codes {codes}\n"
    with contextlib.suppress(OSError):
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
    return subprocess.CompletedProcess([str(script), *map(str, args)], 1 if failed else 0, text, "")
