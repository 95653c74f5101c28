"""The GPT and classifier examples under torchrun with 2 processes (gloo on CPU), on tiny data and models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")

from tests.helpers.distributed import REPO, run_distributed

pytestmark = pytest.mark.distributed


def _result(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, f"expected one RESULT line (global zero only):\n{output[-4000:]}"
    return json.loads(lines[0][len("RESULT "):])


def test_gpt_example_two_processes(tmp_path: Path) -> None:
    words = ["the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "in", "parks", "and", "birds", "sang", "songs"]
    for i in range(40):
        (tmp_path / f"doc{i}.txt").write_text(" ".join(words[(i + j) % len(words)] for j in range(30 + i)))
    (tmp_path / "broken.txt").write_bytes(b"bytes \xff\xfe that are not utf-8 " * 5)
    (tmp_path / "empty.txt").write_text("")
    out = run_distributed(
        REPO / "examples/nlp/train_gpt.py",
        ["--text-files", str(tmp_path / "*.txt"), "--vocab-size", "300", "--context", "16", "--layers", "1",
         "--heads", "2", "--d-model", "32", "--batch-size", "4", "--max-steps", "6", "--num-workers", "0",
         "--val-fraction", "0.2", "--sample-tokens", "5", "--no-progress-bar", "--accelerator", "cpu",
         "--root-dir", str(tmp_path / "run")],
        nproc=2, timeout=120,
    ).stdout
    result = _result(out)
    assert result["val_bpb"] > 0 and result["baseline_bpb"] > 0
    assert '"invalid_utf8_docs": 1' in out and '"empty_docs": 1' in out
    assert (tmp_path / "run" / "tokenizer.json").is_file()
