"""Run Python scripts as fresh interpreters would, without paying their imports every time.

A test that runs many scripts in subprocesses pays the imports (torch, Lightning, dltrain: seconds each on two
cores) once per script. A `ForkServer` is one process that imports the heavy modules once and forks a child per
script: the child starts from the state of an interpreter that has just imported them, runs the script as
``__main__`` (its ``sys.argv``, its working directory, its own stdout/stderr files) and exits with the script's
exit code. Forking is safe here: nothing has started a thread yet when the server forks.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# Shared with tests/helpers/forklaunch.py: run a script as ``__main__`` in a forked child, as ``python script``
# would (argv, working directory, sys.path[0]), and return the exit code its interpreter would have had.
RUN_AS_MAIN = r"""
import os, runpy, sys, traceback


def run_as_main(job):
    os.chdir(job["cwd"])
    sys.argv = [job["script"], *job["args"]]
    sys.path[0] = os.path.dirname(os.path.abspath(job["script"]))
    try:
        runpy.run_path(job["script"], run_name="__main__")
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(exit.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0
"""

_SERVER = RUN_AS_MAIN + r"""
import json
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            code = run_as_main(job)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class ForkServer:
    """A process that has imported ``modules`` and runs scripts in forked children (see the module docstring).

    Args:
        modules: imported once, before any script runs.
        env: the server's environment (the scripts inherit it).
        workdir: where the server keeps its own stderr (the import errors, if any).
    """

    def __init__(self, modules: Sequence[str], env: Mapping[str, str], workdir: Path) -> None:
        self.modules, self.env, self.workdir = list(modules), dict(env), Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[str] | None = None

    def _start(self, timeout: float) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._stderr = open(self.workdir / "server-stderr.txt", "w")
            self._proc = subprocess.Popen([sys.executable, "-c", _SERVER, *self.modules], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self._stderr, env=self.env, text=True,
                                          start_new_session=True)
            self._reply(timeout, "importing " + ", ".join(self.modules))
        return self._proc

    def _reply(self, timeout: float, what: str) -> dict:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout)
        line = proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            server = (self.workdir / "server-stderr.txt").read_text()[-4000:]
            raise AssertionError(f"fork server ({', '.join(self.modules)}): no answer within {timeout:.0f} s while "
                                 f"{what} (killed; its stderr: {server!r})")
        return json.loads(line)

    def run(self, script: str | Path, args: Sequence[str] = (), *, cwd: Path,
            timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with ``args`` in ``cwd``; its stdout and stderr are kept in ``cwd`` too."""
        proc = self._start(timeout)
        assert proc.stdin is not None
        out, err = Path(cwd) / "stdout.txt", Path(cwd) / "stderr.txt"
        job = {"script": str(script), "args": [str(a) for a in args], "cwd": str(cwd), "stdout": str(out),
               "stderr": str(err)}
        proc.stdin.write(json.dumps(job) + "\n")
        proc.stdin.flush()
        rc = self._reply(timeout, f"running {script} {' '.join(map(str, args))}")["rc"]
        return subprocess.CompletedProcess([str(script), *args], rc, out.read_text(), err.read_text())

    def close(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    stream.close()
            self._stderr.close()
            self._proc = None
