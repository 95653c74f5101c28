"""scripts/gpu-check: the dry run (the same code on the CPU, tiny sizes) measures every part and writes the JSON,
the report and the plot, so that the GPU path cannot rot between GPU machines; a part that overruns its time box
is killed and keeps what it measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from benchlib import gpucheck  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.timeout(1200)  # about 1.5 min on 2 quiet cores: six processes that import torch
def test_dry_run_measures_every_part_and_writes_json_report_and_plot(tmp_path: Path) -> None:
    import torch

    out = tmp_path / "check.md"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(REPO / "scripts" / "gpu-check"), "--dry-run", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    doc = json.loads(out.with_suffix(".json").read_text())
    parts = doc["parts"]
    where = f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n" + "\n".join(
        f"--- {k}: {v.get('error')}\n{v.get('output_tail', '')}" for k, v in parts.items() if v["status"] != "ok")
    assert proc.returncode == 0, where
    assert list(parts) == list(gpucheck.PARTS) and all(p["status"] == "ok" for p in parts.values()), where
    assert doc["dry_run"] and doc["downloads"].startswith("none"), doc["downloads"]

    env_part = parts["env"]
    assert env_part["torch"] == torch.__version__ and "dry run" in env_part["device"]

    tests = parts["tests"]  # the CUDA tests, collected and skipped on the CPU
    assert tests["skipped"] > 0 and tests["passed"] == tests["failed"] == tests["error"] == 0, tests

    gpt = parts["gpt"]
    c = gpucheck.SIZES["dry"]["gpt"]
    assert [(r["round"], r["variant"]) for r in gpt["runs"]] == [(0, "hand"), (0, "dltrain")]
    assert all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in gpt["runs"])  # no peak FLOP/s for a CPU
    # FlopCounterMode counts every matrix product: 3x the forward's (backward = 2x), the head's included.
    d, t, b, v, layers = c["d_model"], c["context"], c["batch"], c["vocab"], c["layers"]
    forward = 2 * b * t * (layers * 12 * d * d + v * d) + layers * 2 * 2 * b * t * t * d
    assert gpt["flops_per_batch"] == 3 * forward, (gpt["flops_per_batch"], 3 * forward)
    assert doc["summary"]["gpt"]["dltrain_over_hand"]["median"] > 0

    resnet = parts["resnet"]
    assert {r["variant"] for r in resnet["runs"]} == {"synthetic", "jpeg_decode_cuda"}
    assert all(r["images_per_s"] > 0 for r in resnet["runs"])
    assert resnet["shards"]["samples"] == gpucheck.SIZES["dry"]["resnet"]["batch"] * (
        gpucheck.SIZES["dry"]["resnet"]["warmup"] + gpucheck.SIZES["dry"]["resnet"]["steps"])

    ckpt = parts["checkpoint"]
    assert ckpt["sync"]["saves"] == gpucheck.SIZES["dry"]["checkpoint"]["saves"] and ckpt["sync"]["checkpoint_mib"] > 0
    if gpucheck.async_save_available():
        assert ckpt["async"]["saves"] == ckpt["sync"]["saves"]
    else:
        assert ckpt["async"].startswith("not available")

    report = out.read_text()
    for heading in ("DRY RUN", "CUDA tests", "GPT", "ResNet-50", "Checkpoint blocking time"):
        assert heading in report, report
    assert Path(doc["plot"]).read_bytes().startswith(PNG)
    assert Path(doc["plot"]).parent == tmp_path  # a dry run never overwrites docs/bench/gpu.png


def test_a_part_over_its_time_box_is_killed_and_keeps_what_it_measured(tmp_path: Path) -> None:
    result, log = tmp_path / "result.json", tmp_path / "part.log"
    code = (f"import json, time; open({str(result)!r}, 'w').write(json.dumps({{'runs': [1]}})); "
            "print('measured one', flush=True); time.sleep(60)")
    got = gpucheck.run_part([sys.executable, "-c", code], 3, result, log, dict(os.environ))
    assert got["status"] == "timed out" and got["runs"] == [1] and got["seconds"] < 30, got
    assert "measured one" in got["output_tail"] and "time box of 3 s" in got["error"]
    failed = gpucheck.run_part([sys.executable, "-c", "raise SystemExit('broken part')"], 30,
                               tmp_path / "none.json", log, dict(os.environ))
    assert failed["status"] == "failed" and failed["exit_code"] == 1 and "broken part" in failed["output_tail"]


def test_without_a_gpu_the_real_run_says_so(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, "-m", "benchlib.gpucheck", "--out", str(tmp_path / "x.md")],
                          env={**os.environ, "PYTHONPATH": str(REPO / "scripts")}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "no usable CUDA device" in proc.stderr and "--dry-run" in proc.stderr
