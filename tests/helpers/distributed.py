"""Start a Python script under torchrun (gloo on CPU) from a test and return what it did."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.helpers.forklaunch import fork_launch

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc; empty where there is none."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _pipe_holders(fd: int) -> list[tuple[int, str]]:
    """(pid, description) of the other processes with the pipe behind our ``fd`` open: state, parent, threads'
    kernel wait channels and command line, so that a hang report says what was stuck."""
    target = os.readlink(f"/proc/self/fd/{fd}")
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(f) == target for f in (entry / "fd").iterdir()):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                waits = sorted({(t / "wchan").read_text() for t in (entry / "task").iterdir()})
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:300]
                found.append((pid, f"state {stat[0]}, parent {stat[1]}, waiting in {waits}: {cmd}"))
    return found


def run_distributed(
    script: str | Path,
    args: Sequence[str] = (),
    *,
    nproc: int = 2,
    nnodes: int = 1,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    extra_torchrun: Sequence[str] = (),
    check: bool = True,
    launcher: str = "auto",
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``torchrun --nproc_per_node=nproc``; raise with its output if it fails.

    With ``nnodes > 1`` every "node" is a separate torchrun on this machine, joined through a c10d rendezvous
    on localhost, one process each when ``nproc=1``. ``launcher="auto"`` forks the ranks of a one-node launch
    without torchrun options from rank servers that imported the heavy libraries once, with torchrun's worker
    environment and failure handling (tests/helpers/forklaunch.py); ``"torchrun"`` (or the environment's
    ``DLTRAIN_TEST_LAUNCHER=torchrun``) always starts torchrun itself.
    """
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), full_env.get("PYTHONPATH", "")])
    if launcher not in ("auto", "torchrun"):
        raise ValueError(f"launcher={launcher!r}: 'auto' or 'torchrun'")
    if (launcher == "auto" and os.environ.get("DLTRAIN_TEST_LAUNCHER", "auto") != "torchrun" and nnodes == 1
            and not extra_torchrun):
        forked = fork_launch(script, args, nproc=nproc, env=full_env, timeout=timeout)
        if forked is not None:
            if check and forked.returncode != 0:
                raise AssertionError(f"{script} {' '.join(args)} exited {forked.returncode}:\n"
                                     f"{forked.stdout[-8000:]}")
            return forked
    base = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *extra_torchrun]
    if nnodes == 1:
        cmds = [[*base, "--standalone", str(script), *args]]
    else:
        port = free_port()
        cmds = [
            [*base, f"--nnodes={nnodes}", f"--node_rank={i}", "--rdzv-backend=c10d",
             f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=dltrain-test", str(script), *args]
            for i in range(nnodes)
        ]
    # Each launch in its own session, so that a timeout can kill torchrun *and* its workers: an orphaned worker
    # would keep the output pipe open and block this process forever.
    procs = [subprocess.Popen(c, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
             for c in cmds]
    outputs = []
    codes = []

    def kill_all() -> str:
        """Kill every launch, its descendants and any orphan still holding an output pipe; say who the orphans were."""
        # torchrun starts every rank in a session of its own: killing torchrun's group leaves the ranks running.
        for q in procs:
            for pid in [q.pid, *_descendants(q.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(q.pid, signal.SIGKILL)
        # A process whose parent died before this is no descendant any more, yet keeps the pipe open: without
        # this, the communicate() after the kill waits for it for good (it hung a CI run once).
        orphans = [holder for q in procs if q.stdout is not None for holder in _pipe_holders(q.stdout.fileno())]
        for pid, _ in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return "".join(f"\n  orphan {pid} held the output pipe: {what}" for pid, what in orphans)

    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            orphans = kill_all()
            out, _ = p.communicate(timeout=60)
            raise AssertionError(f"{script} did not finish within {timeout}s (hang?){orphans}\n{out}") from None
        except BaseException:
            # pytest-timeout's failure, Ctrl-C: the ranks would run on as orphans, loading the machine.
            kill_all()
            raise
        outputs.append(out)
        codes.append(p.returncode)
    output = "\n".join(outputs)
    rc = max(codes, key=abs)
    if check and rc != 0:
        # The end of every launch's output: with several "nodes" the one that failed may not be the last.
        tails = "\n".join(f"--- node {i} exited {code}, last lines:\n{out[-8000 // len(outputs):]}"
                          for i, (code, out) in enumerate(zip(codes, outputs)))
        raise AssertionError(f"{script} {' '.join(args)} exited {rc}:\n{tails}")
    return subprocess.CompletedProcess(cmds[0], rc, output, "")
