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
from tests.examples._run import finish

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


def test_readme_example_is_quiet(tmp_path):
    script = _readme_script(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), **quiet_env()}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=240, env=env)
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
