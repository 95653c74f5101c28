"""Real signals (issue 14, item 4): SIGTERM and Ctrl-C (SIGINT) during training make every rank finish its step,
write a checkpoint and exit with 128 + signal; resuming from it ends bitwise equal to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Same data as test_resume's runs (96 samples, global batch 8): its check applies, every sample once per epoch too.
from tests.distributed.test_resume import assert_same_run
from tests.helpers.distributed import REPO, free_port

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
SCRIPT = Path(__file__).parent / "_preempt.py"


def _launch(out: Path, nproc: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), full_env.get("PYTHONPATH", "")])
    if nproc == 1:
        cmd = [sys.executable, str(SCRIPT), "--out", str(out), *extra]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{free_port()}", str(SCRIPT), "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(out: Path, nproc: int, *extra: str) -> str:
    proc = _launch(out, nproc, *extra)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output[-4000:]
    return output


def _reference(tmp_path_factory: pytest.TempPathFactory, nproc: int) -> Path:
    """The uninterrupted run, once per world size for the whole session."""
    ref = tmp_path_factory.getbasetemp() / f"preempt-ref-{nproc}"
    if not (ref / "final.pt").exists():
        _run(ref, nproc)
    return ref


def _signal_after(proc: subprocess.Popen[str], keys: Path, steps: int, signum: int) -> str:
    deadline = time.monotonic() + 180
    while not keys.exists() or len(keys.read_text().splitlines()) < steps:
        assert proc.poll() is None, "the run ended before the signal could be sent"
        assert time.monotonic() < deadline, "the run did not reach the step to signal at"
        time.sleep(0.05)
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=180)
    return output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_one_process_checkpoints_on_a_signal_and_resumes_bitwise(tmp_path, tmp_path_factory, signum):
    ref = _reference(tmp_path_factory, 1)
    run = tmp_path / "run"
    proc = _launch(run, 1, "--slow")
    output = _signal_after(proc, run / "keys-rank0.jsonl", 5, signum)
    assert proc.returncode == 128 + signum, output[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in output and "Traceback" not in output, output[-3000:]
    assert (run / "ckpt" / "last.ckpt").exists()
    _run(run, 1, "--resume")
    assert_same_run(ref, run, 1)


def test_sigterm_to_torchrun_checkpoints_every_rank_and_resumes_bitwise(tmp_path, tmp_path_factory):
    ref = _reference(tmp_path_factory, 2)
    run = tmp_path / "run"
    proc = _launch(run, 2, "--slow")
    output = _signal_after(proc, run / "keys-rank1.jsonl", 4, signal.SIGTERM)  # torchrun forwards it
    assert "stopped by SIGTERM" in output, output[-4000:]
    assert (run / "ckpt" / "last.ckpt").exists()
    _run(run, 2, "--resume")
    assert_same_run(ref, run, 2)


def test_requeue_runs_scontrol_in_a_slurm_job(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "scontrol"  # a stand-in for Slurm's scontrol that records its arguments
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'scontrol.args'}\n")
    fake.chmod(0o755)
    run = tmp_path / "run"
    proc = _launch(run, 1, "--slow", "--requeue",
                   env={"SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    output = _signal_after(proc, run / "keys-rank0.jsonl", 3, signal.SIGUSR1)
    assert proc.returncode == 128 + signal.SIGUSR1, output[-3000:]
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
