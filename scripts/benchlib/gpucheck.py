"""``scripts/gpu-check``: every GPU figure from one command (issue 27), for the minutes a GPU machine is lent.

On a machine with one CUDA GPU it runs, each part in a process of its own with a time box (a part that fails or
overruns is killed and recorded as such; what it had measured is kept, and the other parts still run):

- ``env``: the card's name, driver, memory; torch, CUDA and cuDNN versions; the dltrain commit.
- ``tests``: the CUDA tests (``pytest -m cuda tests``), outcome per test.
- ``gpt``: GPT-2 124M (``dltrain.plugins.text.LanguageModelTask``: 12 layers, 12 heads, 768 wide, 1024 tokens,
  GPT-2's 50257-token vocabulary, tied head), bf16-mixed, ``compile=True``: tokens/s and MFU of dltrain's
  ``Trainer.fit`` and of a hand-written loop over the same model class, optimizer and batches, in alternating
  rounds in one process.
- ``resnet``: ResNet-50 (torchvision, random weights) images/s training on JPEG shards written here with the
  vision plugin's ``decode="cuda"`` (nvJPEG, the image pipeline on the GPU), against synthetic tensors.
- ``checkpoint``: how long a ``ModelCheckpoint`` save blocks training (GPT-2 124M with its AdamW state),
  synchronous vs ``ModelCheckpoint(async_save=True)`` where this checkout has it ("not available" otherwise).

Nothing is downloaded: models are built from code with random weights, data is generated, and each part runs
with ``TORCH_HOME`` in an empty folder that is checked afterwards. Output: a JSON of every figure, a markdown
report section (for BENCHMARKS.md) and a plot (``docs/bench/gpu.png``).

``--dry-run`` runs the same code on the CPU with tiny sizes (``torch.compile`` with the ``eager`` backend, the
CUDA tests collected and skipped), so that tests/scripts/test_gpu_check.py keeps the script from rotting; only
what needs CUDA itself (synchronisation, pinned memory, nvJPEG, the MFU peak) is left to the real run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("env", "tests", "gpt", "resnet", "checkpoint")
# Seconds per part on the GPU (a cap: a part ends when it is done). Their sum plus start-up stays under 8 minutes.
BUDGETS = {"env": 20, "tests": 100, "gpt": 160, "resnet": 100, "checkpoint": 70}
DRY_BUDGETS = {"env": 60, "tests": 150, "gpt": 150, "resnet": 150, "checkpoint": 150}
TOTAL_LIMIT_S = 8 * 60

GPT2 = {"vocab": 50257, "context": 1024, "layers": 12, "heads": 12, "d_model": 768}
SIZES: dict[str, dict[str, Any]] = {
    "gpu": {
        "gpt": {**GPT2, "batch": 16, "first_warmup": 8, "warmup": 3, "steps": 30, "rounds": 3, "compile": {}},
        "resnet": {"model": "resnet50", "precision": "bf16-mixed", "batch": 192, "image": 224, "warmup": 5,
                   "steps": 20, "rounds": 2,
                   "workers": 8, "jpeg_sizes": [(500, 375), (375, 500), (400, 400), (320, 256)]},
        "checkpoint": {**GPT2, "batch": 8, "context": 256, "every": 3, "saves": 4},
        "tests": ["tests"],
    },
    "dry": {
        "gpt": {"vocab": 256, "context": 32, "layers": 2, "heads": 2, "d_model": 32, "batch": 4, "first_warmup": 2,
                "warmup": 1, "steps": 3, "rounds": 1, "compile": {"backend": "eager"}},
        # float32: bfloat16 convolutions on a CPU without bf16 units take seconds per tiny batch
        "resnet": {"model": "resnet50", "precision": "32-true", "batch": 4, "image": 32, "warmup": 1, "steps": 2,
                   "rounds": 1, "workers": 1, "jpeg_sizes": [(40, 30), (30, 40)]},
        "checkpoint": {"vocab": 256, "context": 32, "layers": 2, "heads": 2, "d_model": 32, "batch": 4, "every": 2,
                       "saves": 2},
        "tests": ["tests/gpu"],  # the same selection (-m cuda), collected from the folder that holds most of it
    },
}


# ----------------------------------------------------------------------------------------------- part plumbing


class Recorder:
    """A part's results, rewritten to its JSON file after every change: a part killed by its time box still
    leaves what it had measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self._write()

    def append(self, key: str, value: Any) -> None:
        self.data.setdefault(key, []).append(value)
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def run_part(argv: list[str], budget_s: float, result: Path, log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``argv`` (a part) in its own session for at most ``budget_s``; its results file, read afterwards
    (however it ended), plus how it ended: ``ok``, ``failed`` (exit code, last lines of output) or ``timed out``."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=budget_s)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the part and anything it started (loader workers, pytest)
            rc = proc.wait()
            status = "timed out"
    seconds = time.perf_counter() - t0
    try:
        figures = json.loads(result.read_text())
    except (OSError, ValueError):
        figures = {}
    outcome: dict[str, Any] = {"status": status, "seconds": round(seconds, 1), "budget_s": budget_s, **figures}
    if status != "ok":
        text = log.read_text(errors="replace")
        outcome["exit_code"] = rc
        outcome["output_tail"] = text[-3000:]
        if status == "timed out":
            outcome["error"] = f"killed after its time box of {budget_s:.0f} s"
    return outcome


def _device(dry: bool) -> Any:
    import torch

    return torch.device("cpu" if dry else "cuda")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pin(t: Any, device: Any) -> Any:
    return t.pin_memory() if device.type == "cuda" else t


def _window_timer(device: Any, start_at: int, end_at: int) -> Any:
    """A dltrain callback timing batches ``start_at`` to ``end_at`` (indices in the epoch, both included): the
    device is synchronised at both ends (and only there), as the hand loops do."""
    import dltrain

    class WindowTimer(dltrain.Callback):
        def __init__(self) -> None:
            self.t0: float | None = None
            self.t1: float | None = None
            self.batches = 0

        def on_train_batch_start(self, trainer: Any, task: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == start_at:
                _sync(device)
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, task: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self.t0 is not None:
                self.batches += 1
                if batch_idx == end_at:
                    _sync(device)
                    self.t1 = time.perf_counter()

        def seconds(self) -> float:
            if self.t0 is None or self.t1 is None or self.batches != end_at - start_at + 1:
                raise RuntimeError(f"the timed window of batches {start_at}..{end_at} did not close: started "
                                   f"{self.t0}, ended {self.t1}, {self.batches} batches timed")
            return self.t1 - self.t0

    return WindowTimer()


# ----------------------------------------------------------------------------------------------- env


def part_env(rec: Recorder, dry: bool) -> None:
    import torch

    import dltrain

    rec.set("torch", torch.__version__)
    rec.set("cuda", torch.version.cuda)
    rec.set("cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    rec.set("python", platform.python_version())
    rec.set("dltrain", getattr(dltrain, "__version__", "?"))
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    rec.set("commit", git.stdout.strip() or "?")
    rec.set("cpus", os.cpu_count())
    if dry:
        rec.set("device", f"cpu (dry run: {platform.processor() or platform.machine()})")
        rec.set("driver", None)
        return
    props = torch.cuda.get_device_properties(0)
    rec.set("device", torch.cuda.get_device_name(0))
    rec.set("memory_gib", round(props.total_memory / 2**30, 1))
    rec.set("capability", f"{props.major}.{props.minor}")
    rec.set("gpus", torch.cuda.device_count())
    smi = shutil.which("nvidia-smi")
    if smi is None:
        rec.set("driver", "unknown (no nvidia-smi on PATH)")
        return
    q = subprocess.run([smi, "--query-gpu=driver_version,power.limit,clocks.max.sm", "--format=csv,noheader"],
                       capture_output=True, text=True, timeout=15)
    fields = [f.strip() for f in q.stdout.splitlines()[0].split(",")] if q.returncode == 0 and q.stdout else []
    rec.set("driver", fields[0] if fields else f"unknown (nvidia-smi: {q.stderr.strip()[:200]})")
    if len(fields) >= 3:
        rec.set("power_limit", fields[1])
        rec.set("max_sm_clock", fields[2])


# ----------------------------------------------------------------------------------------------- tests


def parse_junit(path: Path) -> dict[str, Any]:
    """Counts and failures from a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    cases = root.iter("testcase")
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    failures: list[dict[str, str]] = []
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                failures.append({"test": name, "outcome": outcome, "message": (child.get("message") or "")[:500]})
                break
            if child.tag == "skipped":
                outcome = "skipped"
        counts[outcome] += 1
    return {**counts, "failures": failures}


def part_tests(rec: Recorder, dry: bool, work: Path) -> None:
    junit = work / "cuda-tests.xml"
    paths = SIZES["dry" if dry else "gpu"]["tests"]
    cmd = [sys.executable, "-m", "pytest", *paths, "-m", "cuda", "-q", "-p", "no:cacheprovider",
           f"--junitxml={junit}", f"--basetemp={work / 'pytest-tmp'}"]
    rec.set("command", " ".join(["python", "-m", "pytest", *paths, "-m", "cuda"]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    rec.set("seconds", round(time.perf_counter() - t0, 1))
    rec.set("pytest_exit_code", proc.returncode)
    if not junit.exists():
        raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    for key, value in parse_junit(junit).items():
        rec.set(key, value)
    rec.set("summary_line", (proc.stdout.strip().splitlines() or ["?"])[-1])


# ----------------------------------------------------------------------------------------------- GPT-2


def _flops_per_batch(c: dict[str, Any]) -> float:
    """FLOPs of one forward and backward of the model on one batch, counted by torch's FlopCounterMode on the
    meta device (no memory, no time on the GPU); causal attention counted in full, as nanoGPT's estimate does."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from dltrain.plugins.text.models import CausalTransformer

    with torch.device("meta"):
        model = CausalTransformer(c["vocab"], c["context"], c["layers"], c["heads"], c["d_model"])
        ids = torch.zeros(c["batch"], c["context"], dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(ids).flatten(0, 1).float(), ids.flatten()).backward()
    return float(counter.get_total_flops())


def _lm_task(c: dict[str, Any]) -> Any:
    from dltrain.plugins.text import LanguageModelTask

    return LanguageModelTask(vocab_size=c["vocab"], context_length=c["context"], n_layers=c["layers"],
                             n_heads=c["heads"], d_model=c["d_model"], warmup_steps=10)


def _lm_batches(c: dict[str, Any], device: Any, n: int = 4) -> list[dict[str, Any]]:
    import torch

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, c["vocab"], (c["batch"], c["context"] + 1), generator=g)
        out.append({"input_ids": _pin(ids[:, :-1].contiguous(), device),
                    "targets": _pin(ids[:, 1:].contiguous(), device),
                    "n_bytes": _pin(torch.full((c["batch"],), 4 * c["context"]), device)})
    return out


class HandGPT:
    """The hand-written loop: the same model class, AdamW and schedule (the task's own ``configure_optimizers``),
    autocast to bfloat16, ``torch.compile`` of the transformer in place, batches moved as they come."""

    def __init__(self, c: dict[str, Any], device: Any) -> None:
        task = _lm_task(c)
        self.model = task.model.to(device)  # the CausalTransformer; the task only builds it and its optimizer
        self.model.compile(**c["compile"])
        conf = task.configure_optimizers()
        self.opt, self.sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
        self.device = device

    def run(self, batches: list[dict[str, Any]], warmup: int) -> float:
        import torch
        import torch.nn.functional as F

        self.model.train()
        t0 = 0.0
        for i, batch in enumerate(batches):
            if i == warmup:
                _sync(self.device)
                t0 = time.perf_counter()
            ids = batch["input_ids"].to(self.device, non_blocking=True)
            targets = batch["targets"].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                logits = self.model(ids)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.sched.step()
        _sync(self.device)
        return time.perf_counter() - t0


def part_gpt(rec: Recorder, dry: bool, work: Path) -> None:
    import torch

    from benchlib.common import make_dl_trainer
    from dltrain.callbacks.throughput import device_peak_flops

    c = SIZES["dry" if dry else "gpu"]["gpt"]
    device = _device(dry)
    torch.manual_seed(0)
    flops = _flops_per_batch(c)
    peak = device_peak_flops(device, "bf16-mixed")
    tokens = c["batch"] * c["context"]
    rec.set("config", {k: v for k, v in c.items() if k != "compile"})
    rec.set("compile", c["compile"] or True)
    rec.set("flops_per_batch", flops)
    rec.set("peak_flops", peak)
    rec.set("params", sum(p.numel() for p in _lm_task(c).model.parameters()))
    data = _lm_batches(c, device)
    hand = HandGPT(c, device)
    task = _lm_task(c)
    notes: list[str] = []
    for r in range(c["rounds"]):
        warmup = c["first_warmup"] if r == 0 else c["warmup"]
        batches = [data[i % len(data)] for i in range(warmup + c["steps"])]
        # The hand loop first in every round: it pays the first compilation in round 0 (dltrain's compiled model
        # is another instance of the same class), which the warm-up steps leave out of the timed window anyway.
        for variant in ("hand", "dltrain"):
            if variant == "hand":
                seconds = hand.run(batches, warmup)
            else:
                timer = _window_timer(device, warmup, len(batches) - 1)
                trainer = make_dl_trainer(notes, accelerator=device.type, devices=1, precision="bf16-mixed",
                                          compile=c["compile"] or True, max_steps=len(batches), max_epochs=1,
                                          default_root_dir=str(work / f"gpt-{r}"), callbacks=[timer])
                trainer.fit(task, batches)
                seconds = timer.seconds()
            rate = c["steps"] * tokens / seconds
            rec.append("runs", {"round": r, "variant": variant, "seconds": seconds, "steps": c["steps"],
                                "tokens_per_s": rate,
                                "mfu": c["steps"] * flops / seconds / peak if peak else None})
    if notes:
        rec.set("notes", notes)


# ----------------------------------------------------------------------------------------------- ResNet-50


def _jpeg(args: tuple[int, int, int]) -> bytes:
    """A photo-like JPEG (smooth random content, quality 90): compresses and decodes like a photograph."""
    import io

    import numpy as np
    from PIL import Image

    index, w, h = args
    rng = np.random.default_rng(index)
    base = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_jpeg_shards(folder: Path, n: int, sizes: list[tuple[int, int]], classes: int = 1000) -> list[str]:
    """``n`` JPEG samples in shards of 256 (with an index), generated by a process per CPU."""
    from concurrent.futures import ProcessPoolExecutor

    from dltrain.data import write_shards

    jobs = [(i, *sizes[i % len(sizes)]) for i in range(n)]
    with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        images = list(pool.map(_jpeg, jobs, chunksize=32))
    samples = ({"__key__": f"img{i:06d}", "jpg": data, "cls": i % classes} for i, data in enumerate(images))
    return write_shards(samples, str(folder / "train-%06d.tar"), max_count=256)


def part_resnet(rec: Recorder, dry: bool, work: Path) -> None:
    import torch

    import dltrain.plugins
    from benchlib.common import make_dl_trainer

    c = SIZES["dry" if dry else "gpu"]["resnet"]
    device = _device(dry)
    vision = dltrain.plugins.get("vision")
    rec.set("config", c)
    t0 = time.perf_counter()
    n = c["batch"] * (c["warmup"] + c["steps"])  # one epoch per fit
    urls = write_jpeg_shards(work / "jpeg", n, [tuple(s) for s in c["jpeg_sizes"]])
    shard_bytes = sum(Path(u).stat().st_size for u in urls)
    rec.set("shards", {"samples": n, "files": len(urls), "mean_jpeg_kib": shard_bytes / n / 1024,
                       "seconds_to_write": time.perf_counter() - t0})
    options = {"size": c["image"], "num_classes": 1000}
    g = torch.Generator().manual_seed(0)
    synthetic = [(_pin(torch.randn(c["batch"], 3, c["image"], c["image"], generator=g), device),
                  _pin(torch.randint(0, 1000, (c["batch"],), generator=g), device)) for _ in range(4)]
    notes: list[str] = []
    for r in range(c["rounds"]):
        for variant in ("synthetic", "jpeg_decode_cuda"):
            torch.manual_seed(r)
            decode = "cuda" if variant == "jpeg_decode_cuda" else "cpu"
            task = vision.tasks["classification"](c["model"], num_classes=1000, decode=decode,
                                                  image_options={"size": c["image"]} if decode == "cuda" else None,
                                                  scheduler="none")
            if variant == "synthetic":
                loader: Any = [synthetic[i % len(synthetic)] for i in range(c["warmup"] + c["steps"])]
            else:
                # decode="cuda": the workers read JPEG bytes, the task decodes them on the batch's device
                # (on the CPU in a dry run: the same code path).
                loader = vision.dataset(urls, "train", batch_size=c["batch"], options={**options, "decode": "cuda"},
                                        shuffle=True).loader(num_workers=c["workers"])
            timer = _window_timer(device, c["warmup"], c["warmup"] + c["steps"] - 1)
            trainer = make_dl_trainer(notes, accelerator=device.type, devices=1, precision=c["precision"],
                                      max_steps=c["warmup"] + c["steps"], max_epochs=1,
                                      default_root_dir=str(work / f"resnet-{variant}-{r}"), callbacks=[timer])
            trainer.fit(task, loader)
            seconds = timer.seconds()
            rec.append("runs", {"round": r, "variant": variant, "seconds": seconds, "steps": c["steps"],
                                "images_per_s": c["steps"] * c["batch"] / seconds})
    if notes:
        rec.set("notes", notes)


# ----------------------------------------------------------------------------------------------- checkpoints


def async_save_available() -> bool:
    """Whether this checkout's ModelCheckpoint takes ``async_save`` (added by the storage work, issue 23)."""
    import inspect

    from dltrain.callbacks import ModelCheckpoint

    return "async_save" in inspect.signature(ModelCheckpoint).parameters


def part_checkpoint(rec: Recorder, dry: bool, work: Path) -> None:
    """Blocking time of a save: the gap between the end of a step and the start of the next one (the Trainer
    runs ModelCheckpoint after the other callbacks: the gap holds the save, or its synchronous part), minus the
    same gap on steps without a save. The device is synchronised at each step end so the gap holds no compute."""
    import dltrain
    from benchlib.common import make_dl_trainer
    from dltrain.callbacks import ModelCheckpoint

    c = SIZES["dry" if dry else "gpu"]["checkpoint"]
    device = _device(dry)
    modes = ["sync", "async"] if async_save_available() else ["sync"]
    rec.set("config", c)
    if "async" not in modes:
        rec.set("async", "not available: this checkout's ModelCheckpoint has no async_save")
    data = _lm_batches(c, device)
    steps = c["every"] * c["saves"] + 1
    batches = [data[i % len(data)] for i in range(steps)]

    class Gaps(dltrain.Callback):
        def __init__(self) -> None:
            self.ended: float | None = None
            self.gaps: dict[int, float] = {}  # global step before the gap -> seconds

        def on_train_batch_end(self, trainer: Any, task: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            _sync(device)
            self.ended = time.perf_counter()

        def on_train_batch_start(self, trainer: Any, task: Any, batch: Any, batch_idx: int) -> None:
            if self.ended is not None:
                self.gaps[trainer.global_step] = time.perf_counter() - self.ended

    for mode in modes:
        gaps = Gaps()
        kwargs: dict[str, Any] = {"async_save": True} if mode == "async" else {}
        ckpt = ModelCheckpoint(dirpath=str(work / f"ckpt-{mode}"), every_n_train_steps=c["every"], save_top_k=-1,
                               save_last=False, **kwargs)
        task = _lm_task(c)
        trainer = make_dl_trainer([], accelerator=device.type, devices=1, precision="bf16-mixed",
                                  max_steps=steps, max_epochs=1, enable_progress_bar=False,
                                  default_root_dir=str(work / f"ckpt-run-{mode}"), callbacks=[gaps, ckpt])
        t0 = time.perf_counter()
        trainer.fit(task, batches)
        fit_s = time.perf_counter() - t0
        saved = sorted(int(s) for s in gaps.gaps if s > 0 and s % c["every"] == 0)
        plain = [g for s, g in gaps.gaps.items() if s not in saved and s > 1]
        base = statistics.median(plain) if plain else 0.0
        files = [p for p in (work / f"ckpt-{mode}").rglob("*") if p.is_file()]
        rec.set(mode, {"blocking_s_per_save": statistics.median([gaps.gaps[s] - base for s in saved]),
                       "blocking_s_each": [gaps.gaps[s] - base for s in saved], "saves": len(saved),
                       "step_gap_without_save_s": base, "fit_s": fit_s,
                       "checkpoint_mib": sum(p.stat().st_size for p in files) / max(1, len(saved)) / 2**20})


# ----------------------------------------------------------------------------------------------- report


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(parts: dict[str, Any]) -> dict[str, Any]:
    """The headline figures (medians over rounds; dltrain/hand ratios paired per round)."""
    out: dict[str, Any] = {}
    gpt = parts.get("gpt", {})
    runs = gpt.get("runs", [])
    by = {v: [r for r in runs if r["variant"] == v] for v in ("hand", "dltrain")}
    if by["hand"] or by["dltrain"]:
        out["gpt"] = {v: {"tokens_per_s": _med([r["tokens_per_s"] for r in rs]),
                          "mfu": _med([r["mfu"] for r in rs]) if rs and rs[0]["mfu"] is not None else None}
                      for v, rs in by.items() if rs}
        pairs = {r["round"]: r for r in by["hand"]}
        ratios = [d["tokens_per_s"] / pairs[d["round"]]["tokens_per_s"] for d in by["dltrain"] if d["round"] in pairs]
        if ratios:
            out["gpt"]["dltrain_over_hand"] = {"median": _med(ratios), "rounds": ratios}
    resnet = parts.get("resnet", {})
    runs = resnet.get("runs", [])
    variants = {v: [r["images_per_s"] for r in runs if r["variant"] == v] for v in ("synthetic", "jpeg_decode_cuda")}
    if any(variants.values()):
        out["resnet"] = {v: {"images_per_s": _med(xs)} for v, xs in variants.items() if xs}
        if all(variants.values()):
            out["resnet"]["jpeg_over_synthetic"] = _med(variants["jpeg_decode_cuda"]) / _med(variants["synthetic"])
    ck = parts.get("checkpoint", {})
    if "sync" in ck:
        out["checkpoint"] = {m: ck[m]["blocking_s_per_save"] for m in ("sync", "async") if isinstance(ck.get(m), dict)}
        if isinstance(ck.get("async"), str):
            out["checkpoint"]["async"] = ck["async"]
    return out


def plot_data(summary: dict[str, Any], dry: bool) -> dict[str, dict[str, dict[str, Any]]]:
    """benchlib.render's GPU plot input: case -> variant -> {"per_s", "unit", "mfu"}."""
    tag = "DRY RUN on the CPU, tiny sizes: " if dry else ""
    data: dict[str, dict[str, dict[str, Any]]] = {}
    for v, d in summary.get("gpt", {}).items():
        if isinstance(d, dict) and "tokens_per_s" in d:
            data.setdefault(f"{tag}GPT-2 124M, bf16-mixed, compile", {})[v] = {
                "per_s": d["tokens_per_s"], "unit": "tokens/s", "mfu": d["mfu"]}
    for v, d in summary.get("resnet", {}).items():
        if isinstance(d, dict):
            data.setdefault(f"{tag}ResNet-50 training", {})[v] = {"per_s": d["images_per_s"], "unit": "images/s",
                                                                 "mfu": None}
    for m, s in summary.get("checkpoint", {}).items():
        if isinstance(s, float):
            data.setdefault(f"{tag}checkpoint save", {})[m] = {"per_s": s, "unit": "seconds blocked per save",
                                                               "mfu": None}
    return data


def _fmt(x: Any, spec: str = ",.0f") -> str:
    return "—" if x is None or (isinstance(x, float) and x != x) else format(x, spec)


def report(doc: dict[str, Any]) -> str:
    parts, summary = doc["parts"], doc["summary"]
    env = parts.get("env", {})
    lines = [f"## GPU check ({'DRY RUN on the CPU, tiny sizes: not GPU figures' if doc['dry_run'] else 'one GPU'})",
             "",
             f"`{doc['command']}`, {doc['started']} UTC, {doc['seconds']:.0f} s in all (limit {TOTAL_LIMIT_S} s); "
             f"{env.get('device', '?')}, driver {env.get('driver', '?')}, torch {env.get('torch', '?')} "
             f"(CUDA {env.get('cuda', '?')}, cuDNN {env.get('cudnn', '?')}), dltrain {env.get('commit', '?')}; "
             f"downloads: {doc['downloads']}.", "",
             "| part | status | seconds (box) |", "| --- | --- | --- |"]
    for name, p in parts.items():
        why = f": {p['error']}" if p.get("error") else ""
        lines.append(f"| {name} | {p['status']}{why} | {p['seconds']:.0f} ({p['budget_s']:.0f}) |")
    t = parts.get("tests", {})
    if "passed" in t:
        lines += ["", f"**CUDA tests** (`{t.get('command')}`): {t['passed']} passed, {t['failed']} failed, "
                      f"{t['error']} errors, {t['skipped']} skipped."]
        lines += [f"- {f['outcome']}: `{f['test']}`: {f['message'][:200]}" for f in t.get("failures", [])]
    g = summary.get("gpt")
    if g:
        cfg = parts["gpt"].get("config", {})
        lines += ["", f"**GPT{'-2 124M' if not doc['dry_run'] else ' (tiny)'}** ({parts['gpt'].get('params', 0) / 1e6:.2f} M parameters, batch "
                      f"{cfg.get('batch')} x {cfg.get('context')} tokens, bf16-mixed, compile "
                      f"{parts['gpt'].get('compile')}; {cfg.get('rounds')} alternating rounds of {cfg.get('steps')} "
                      f"timed steps; MFU = model FLOPs (FlopCounterMode, forward + backward) / peak "
                      f"{_fmt(parts['gpt'].get('peak_flops'), '.3g')} FLOP/s):", "",
                  "| loop | tokens/s | MFU |", "| --- | --- | --- |"]
        for v in ("hand", "dltrain"):
            if v in g:
                mfu = g[v]["mfu"]
                lines.append(f"| {v} | {_fmt(g[v]['tokens_per_s'])} | {_fmt(None if mfu is None else 100 * mfu, '.1f')}"
                             f"{' %' if mfu is not None else ''} |")
        if "dltrain_over_hand" in g:
            r = g["dltrain_over_hand"]
            lines.append(f"\ndltrain / hand loop, tokens/s: **{r['median']:.3f}** (median of "
                         f"{', '.join(f'{x:.3f}' for x in r['rounds'])})")
    rs = summary.get("resnet")
    if rs:
        sh = parts["resnet"].get("shards", {})
        cfg = parts["resnet"].get("config", {})
        lines += ["", f"**ResNet-50** (batch {cfg.get('batch')}, {cfg.get('image')} px, {cfg.get('precision')}, "
                      f"{cfg.get('workers')} loader workers; {sh.get('samples')} JPEGs written here, mean "
                      f"{_fmt(sh.get('mean_jpeg_kib'), '.0f')} KiB):", "",
                  "| data | images/s |", "| --- | --- |"]
        for v in ("synthetic", "jpeg_decode_cuda"):
            if v in rs:
                label = "synthetic tensors" if v == "synthetic" else 'JPEG shards, `decode="cuda"`'
                lines.append(f"| {label} | {_fmt(rs[v]['images_per_s'])} |")
        if "jpeg_over_synthetic" in rs:
            lines.append(f"\nJPEG shards / synthetic: **{rs['jpeg_over_synthetic']:.3f}**")
    ck = parts.get("checkpoint", {})
    if "sync" in ck:
        lines += ["", f"**Checkpoint blocking time** (GPT{'-2 124M' if not doc['dry_run'] else ' (tiny)'} with "
                      "AdamW state, per save):", "",
                  "| save | blocked per save (s) | checkpoint (MiB) | step gap without save (s) |",
                  "| --- | --- | --- | --- |"]
        for m in ("sync", "async"):
            v = ck.get(m)
            if isinstance(v, dict):
                lines.append(f"| {m} | {v['blocking_s_per_save']:.3f} | {v['checkpoint_mib']:.0f} | "
                             f"{v['step_gap_without_save_s']:.4f} |")
            elif isinstance(v, str):
                lines.append(f"| {m} | {v} | | |")
    if doc.get("plot"):
        lines += ["", f"Plot: `{doc['plot']}`"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- main


def _child(part: str, result: Path, dry: bool, work: Path, budget_s: float) -> int:
    # Ends itself a little after its time box: the part outlives nothing, even if its orchestrator was killed.
    signal.alarm(int(budget_s) + 30)
    sys.path.insert(0, str(ROOT / "scripts"))
    rec = Recorder(result)
    fn: dict[str, Callable[..., None]] = {"env": part_env, "tests": part_tests, "gpt": part_gpt,
                                          "resnet": part_resnet, "checkpoint": part_checkpoint}
    if part == "env":
        part_env(rec, dry)
    else:
        fn[part](rec, dry, work)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the same code on the CPU with tiny sizes (CI)")
    p.add_argument("--out", default=None,
                   help="report path (markdown); the JSON goes next to it (default /tmp/dltrain-gpu-check/gpu-check.md)")
    p.add_argument("--plot", default=None, help="plot path (default docs/bench/gpu.png; dry run: next to --out)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS",
                   help="change a part's time box")
    p.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--budget-s", type=float, default=600, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.part:
        return _child(args.part, Path(args.result), args.dry_run, Path(args.work), args.budget_s)

    parts = [x for x in args.parts.split(",") if x]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown parts {unknown}; choose from {','.join(PARTS)}")
    budgets = dict(DRY_BUDGETS if args.dry_run else BUDGETS)
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in PARTS or not seconds.replace(".", "", 1).isdigit():
            p.error(f"--budget {item!r}: use PART=SECONDS with PART one of {','.join(PARTS)}")
        budgets[name] = float(seconds)
    out = Path(args.out or "/tmp/dltrain-gpu-check/gpu-check.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = Path(args.plot) if args.plot else (out.with_suffix(".png") if args.dry_run else ROOT / "docs/bench/gpu.png")
    if not args.dry_run:
        probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                               capture_output=True, text=True)
        if probe.stdout.strip() != "True":
            print("scripts/gpu-check: no usable CUDA device (torch.cuda.is_available() is not True: "
                  f"{(probe.stdout + probe.stderr).strip()[-300:]}); --dry-run runs the CPU path", file=sys.stderr)
            return 2

    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="dltrain-gpu-check-"))
    logs = out.parent / f"{out.stem}-logs"
    logs.mkdir(exist_ok=True)
    results: dict[str, Any] = {}
    torch_home = work / "torch-home"  # empty: whatever lands in it was downloaded
    torch_home.mkdir()
    env = {**os.environ, "TORCH_HOME": str(torch_home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")])}
    for part in parts:
        part_work = work / part
        part_work.mkdir()
        result = part_work / "result.json"
        argv = [sys.executable, "-m", "benchlib.gpucheck", "--part", part, "--result", str(result),
                "--work", str(part_work), *(["--dry-run"] if args.dry_run else [])]
        budget = budgets[part]
        if not args.dry_run:  # the whole command stays within TOTAL_LIMIT_S (a few seconds kept for the report)
            budget = min(budget, TOTAL_LIMIT_S - 10 - (time.perf_counter() - t0))
            if budget < 5:
                results[part] = {"status": "not run", "error": "no time left of the 8 minutes", "seconds": 0.0,
                                 "budget_s": 0.0}
                continue
        print(f"[gpu-check] {part} (time box {budget:.0f} s)", flush=True)
        results[part] = run_part([*argv, "--budget-s", str(budget)], budget, result, logs / f"{part}.log", env)
        print(f"[gpu-check] {part}: {results[part]['status']} in {results[part]['seconds']:.0f} s", flush=True)
    downloaded = sorted(str(f.relative_to(torch_home)) for f in torch_home.rglob("*") if f.is_file())
    doc: dict[str, Any] = {
        "command": "scripts/gpu-check" + (" --dry-run" if args.dry_run else ""),
        "dry_run": args.dry_run, "started": started, "seconds": time.perf_counter() - t0,
        "downloads": "none (TORCH_HOME stayed empty)" if not downloaded else f"FILES DOWNLOADED: {downloaded}",
        "parts": results, "summary": summarize(results), "plot": None,
    }
    data = plot_data(doc["summary"], args.dry_run)
    if data:
        from benchlib import render

        plot.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            written = render.write_plots({"gpu": data}, tmp)
            shutil.copyfile(written["gpu"], plot)
        doc["plot"] = str(plot)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str))
    out.write_text(report(doc))
    shutil.rmtree(work, ignore_errors=True)
    print(f"[gpu-check] {doc['seconds']:.0f} s; report {out}, results {out.with_suffix('.json')}"
          + (f", plot {plot}" if doc["plot"] else ""))
    failed = [k for k, v in results.items() if v["status"] != "ok"]
    if failed:
        print(f"[gpu-check] parts that did not finish: {failed} (their logs: {logs})", file=sys.stderr)
    if downloaded:
        print(f"[gpu-check] something was downloaded into TORCH_HOME: {downloaded}", file=sys.stderr)
    return 1 if failed or downloaded else 0


if __name__ == "__main__":
    sys.exit(main())
