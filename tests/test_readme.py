"""The README's example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_example_runs(tmp_path):
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README has no python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    assert 20 <= len(blocks[0].splitlines()) <= 45
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=240, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                                              "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 0, result.stderr[-3000:]
    loss = float(re.search(r"'val/loss': ([0-9.e-]+)", result.stdout).group(1))
    assert loss < 0.5, result.stdout
    # Checkpoints live with their run: the CSV logger's version folder.
    assert (tmp_path / "runs" / "readme" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").exists()
