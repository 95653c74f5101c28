"""An example stopped after its first epoch continues from its checkpoint with --resume."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.examples._run import run

pytest.importorskip("soundfile")
pytest.importorskip("espeakng_loader")


def test_audio_example_resumes_its_run(tmp_path: Path) -> None:
    tiny = ["--max-variants", "10", "--takes", "1", "1", "1", "--batch-size", "16", "--workers", "0", "--no-progress",
            "--data-dir", str(tmp_path / "data"), "--root-dir", str(tmp_path / "runs")]
    out, _ = run("audio", [*tiny, "--max-epochs", "1"])
    assert re.findall(r"^epoch (\d+):", out, re.M) == ["0"], out
    last = next((tmp_path / "runs").rglob("last.ckpt"))

    out, err = run("audio", [*tiny, "--max-epochs", "2", "--resume"])
    assert f"restored from {last}" in err, err
    assert "end of epoch 0" in err, err
    assert re.findall(r"^epoch (\d+):", out, re.M) == ["1"], out  # epoch 0 is not trained again
    assert "test metrics:" in out
