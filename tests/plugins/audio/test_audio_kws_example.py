"""The keyword-spotting example: tiny synthesised set, a few steps, one and two processes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from tests.helpers.distributed import REPO, run_distributed

pytest.importorskip("soundfile")
pytest.importorskip("espeakng_loader")

SCRIPT = REPO / "examples" / "audio" / "train_kws.py"
TINY = ["--max-variants", "10", "--takes", "1", "1", "1", "--batch-size", "8", "--max-steps", "3",
        "--epochs", "1", "--no-progress-bar", "--num-workers", "0"]


def _digits():
    spec = importlib.util.spec_from_file_location("kws_digits", REPO / "examples" / "audio" / "digits.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kws_digits"] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def test_voice_split_holds_out_test_voices():
    digits = _digits()
    split = digits.split_variants()
    train, val, test = (set(split[s]) for s in ("train", "val", "test"))
    assert not (train & test) and not (train & val) and not (val & test)
    assert len(test) >= 10 and len(train) >= 40
    assert not (digits.EFFECT_VARIANTS & (train | val | test))


def test_help_lists_the_user_options():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "src")}).stdout
    for flag in ("--train-shards", "--sample-rate", "--clip-seconds", "--precision", "--devices", "--data-dir"):
        assert flag in out


@pytest.mark.distributed
def test_example_two_processes(tmp_path):
    result = run_distributed(
        SCRIPT, [*TINY, "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "runs")],
        nproc=2, timeout=120,
    )
    out = result.stdout
    assert out.count("test metrics:") == 1, out  # printed by global rank 0 only
    assert "test/acc=" in out and "confusion matrix" in out, out
    assert out.count("synthesised") == 3, out  # one process synthesised train, val and test
    assert (tmp_path / "data" / "digits.json").exists()
