"""The object-storage guide's example (docs/guides/object-storage.md) runs as written against the S3 test server,
and a second run resumes from its "last" on the store."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.s3 import SECRET

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.mark.timeout(1200)
def test_object_storage_example_runs_and_resumes(s3, tmp_path):
    text = (REPO / "docs" / "guides" / "object-storage.md").read_text()
    block = re.search(r"<!-- object-storage-example -->\n```python\n(.*?)```", text, re.S)
    assert block, "the object-storage guide has no example"
    script = tmp_path / "example.py"
    script.write_text(block.group(1))
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), **s3.env,
           "BUCKET": s3.name}
    outputs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout.strip().splitlines()[-1])
    last = f"s3://{s3.name}/runs/demo/lightning_logs/version_0/checkpoints/last.ckpt"
    assert outputs == [f"{last} 32", f"{last} 32"], outputs  # the second run resumed the finished fit
    objects = s3.objects()
    assert "data/train.index.json" in objects
    assert any(k.startswith("runs/demo/") and k.endswith("/metrics.csv") for k in objects), objects  # the CSV log
    assert not list(tmp_path.glob("s3*")), "something was written to a local folder named after the URL"
    for key in objects:
        assert SECRET.encode() not in s3.read(key), key
