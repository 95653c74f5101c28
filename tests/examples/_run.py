"""Run an example script as a user would (a subprocess of this Python) and return what it printed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "vision": REPO / "examples" / "vision" / "train.py",
    "gpt": REPO / "examples" / "nlp" / "train_gpt.py",
    "classifier": REPO / "examples" / "nlp" / "train_classifier.py",
    "audio": REPO / "examples" / "audio" / "train_kws.py",
}


def example_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    return env


def start(name: str, args: Sequence[str], cwd: Path = REPO, **env: str) -> subprocess.Popen[str]:
    """Start example ``name`` with ``args`` in ``cwd``; stdout and stderr are kept apart (the Trainer reports on
    stderr)."""
    return subprocess.Popen([sys.executable, str(EXAMPLES[name]), *args], cwd=cwd, env=example_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
    """Wait for ``proc``; its (stdout, stderr), or an AssertionError carrying both when it failed or hung."""
    out: str
    err: str
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args!r} ran past {timeout}s\nstdout:\n{out}\nstderr:\n{err}") from None
    assert proc.returncode == 0, f"{proc.args!r} exited with {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return out, err


def run(name: str, args: Sequence[str], timeout: float = 120) -> tuple[str, str]:
    return finish(start(name, args), timeout)
