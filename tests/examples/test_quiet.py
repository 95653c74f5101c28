"""A quiet first run (issue 28, item 5): the README's complete example and a short run of each example print no
warning, with every warning turned into an error (``PYTHONWARNINGS=error``), on one process and under torchrun.

Third-party warnings outside dltrain's control are allowed in one place, `ALLOWED`, each with its reason; a
warning dltrain or an example could avoid is never listed there. Warnings a user's own settings deserve (a
logging interval longer than the epoch, ...) stay: the examples pick settings that do not deserve them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.examples._run import EXAMPLES, finish, start

REPO = Path(__file__).resolve().parents[2]

# (message prefix, category, module regex, why it is outside dltrain's control). Empty today: nothing needed.
ALLOWED: list[tuple[str, str, str, str]] = []


def quiet_env(**extra: str) -> dict[str, str]:
    """``PYTHONWARNINGS``: every warning an error, but those in `ALLOWED` (later filters take precedence)."""
    filters = ["error", *(f"ignore:{msg}:{cat}:{mod}" for msg, cat, mod, _ in ALLOWED)]
    return {"PYTHONWARNINGS": ",".join(filters), **extra}


def assert_quiet(stderr: str) -> None:
    """No warning reached stderr by any route (warnings.warn, logging, a print)."""
    lines = [line for line in stderr.splitlines() if re.search(r"warn|deprecat", line, re.I)]
    assert not lines, "\n".join(lines)


def _readme_script(tmp_path: Path) -> Path:
    text = (REPO / "README.md").read_text()
    script = tmp_path / "example.py"
    script.write_text(re.findall(r"```python\n(.*?)```", text, re.S)[0])
    return script


# Runs a script as on a machine with 8 cores: Lightning's "few loader workers" warning depends on the cores (this
# machine's 2 never trigger it), and a user's machine has more.
_EIGHT_CORES = ("import os, runpy, sys; os.sched_getaffinity = lambda pid: set(range(8)); "
                "runpy.run_path(sys.argv[1], run_name='__main__')")


def test_readme_example_is_quiet(tmp_path):
    script = _readme_script(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), **quiet_env()}
    result = subprocess.run([sys.executable, "-c", _EIGHT_CORES, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_quiet(result.stderr)
    assert "'val/loss'" in result.stdout


@pytest.mark.distributed
@pytest.mark.slow
def test_readme_example_is_quiet_under_torchrun(tmp_path):
    # Fabric.all_gather goes through torch.distributed.nn.functional.all_gather, deprecated in torch 2.14: one
    # FutureWarning per rank at the first epoch while dltrain called it.
    script = _readme_script(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), **quiet_env()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _, err = finish(proc, timeout=300)
    assert_quiet(err)


# Short runs: each example's own defaults (progress bar on, default logger and checkpointing, its workers), made
# small by the shared flags and by its data-size flags only.
SHORT = {
    "vision": ["--max-epochs", "1", "--limit-batches", "4", "--batch-size", "32"],
    "gpt": ["--max-steps", "4", "--limit-batches", "2", "--max-docs", "300", "--vocab-size", "300", "--context",
            "32", "--layers", "1", "--d-model", "32", "--sample-tokens", "5"],
    "classifier": ["--max-epochs", "1", "--limit-batches", "2", "--vocab-size", "300", "--layers", "1",
                   "--d-model", "32"],
    "audio": ["--max-variants", "10", "--takes", "1", "1", "1", "--max-epochs", "1", "--limit-batches", "2",
              "--batch-size", "16"],
}
NEEDS = {"vision": ("torchvision", "sklearn"), "gpt": ("tokenizers",), "classifier": ("tokenizers",),
         "audio": ("soundfile", "espeakng_loader")}


@pytest.mark.slow
def test_each_example_short_run_is_quiet_and_writes_only_under_root_dir(tmp_path):
    import importlib.util

    names = [n for n in sorted(EXAMPLES) if all(importlib.util.find_spec(m) for m in NEEDS[n])]
    assert names, "no example's dependencies are installed"
    procs = {}
    for name in names:  # started together: most of each run is imports and data generation
        cwd = tmp_path / name / "cwd"
        cwd.mkdir(parents=True)
        procs[name] = start(name, [*SHORT[name], "--root-dir", str(tmp_path / name / "run")], cwd=cwd,
                            **quiet_env())
    for name, proc in procs.items():
        _, err = finish(proc, timeout=900)
        assert_quiet(err)
        # Everything it wrote (data included) is under --root-dir: the folder it ran in stays empty.
        assert not list((tmp_path / name / "cwd").iterdir()), list((tmp_path / name / "cwd").rglob("*"))[:5]
        assert (tmp_path / name / "run" / "data").is_dir(), name
