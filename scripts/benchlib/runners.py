"""Worker-side runners of the training cases: loops (cases 1-2), DDP (4), resume (5), plugins (6), CUDA."""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchlib.common import (
    _CLASSES,
    _CPU,
    _PERF,
    _jsonable,
    _maxrss_mb,
    _threads,
    _times,
    dl_task_cls,
    loss_fn,
    make_dl_trainer,
    make_model,
    make_optimizer,
    pl_classes,
)
from benchlib.config import FULL

_NOMINAL_CPU_PEAK = 1e11  # FLOP/s passed to ThroughputMonitor on a CPU; only scales the logged MFU


class LoopRunner:
    """Cases 1 and 2: one epoch of `steps` batches, hand loop vs dltrain vs Lightning vs Fabric (CPU)."""

    def __init__(self, variant: str, kind: str, cfg: dict[str, Any], tmp: str) -> None:
        import torch
        from torch.utils.data import TensorDataset

        self.variant, self.kind, self.cfg, self.tmp = variant, kind, cfg, tmp
        g = torch.Generator().manual_seed(0)
        n = cfg["steps"] * cfg["batch"]
        if kind == "cnn":
            x = torch.randn(n, 1, 28, 28, generator=g)
        else:
            x = torch.randn(n, cfg["in_dim"], generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        self.data = TensorDataset(x, y)
        self.notes: list[str] = []

    def loader(self) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(self.data, batch_size=self.cfg["batch"], shuffle=True)

    def run(self, rep: int, args: dict[str, Any]) -> dict[str, Any]:
        import torch

        torch.manual_seed(rep)
        root = tempfile.mkdtemp(prefix=f"{self.variant}-", dir=self.tmp)
        try:
            out = getattr(self, "_" + self.variant)(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        out["rss_mb"] = _maxrss_mb()
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def _hand(self, root: str) -> dict[str, Any]:
        model = make_model(self.kind, self.cfg)
        opt = make_optimizer(self.kind, model.parameters())
        lossf = loss_fn(self.kind)
        loader = self.loader()
        gc.collect()
        c0, t0 = _CPU(), _PERF()
        model.train()
        first = None
        ends: list[tuple[float, float]] = []
        n = 0
        for i, (x, y) in enumerate(loader):
            if first is None:
                first = (_PERF(), _CPU())
            loss = lossf(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if (i + 1) % 50 == 0:
                loss.item()  # what a hand loop logs
            n += 1
            ends.append((_PERF(), _CPU()))
        t1, c1 = _PERF(), _CPU()
        return _times(t0, c0, t1, c1, first, ends, n)

    def _fabric(self, root: str) -> dict[str, Any]:
        from lightning.fabric import Fabric

        fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
        fabric.launch()
        model = make_model(self.kind, self.cfg)
        opt = make_optimizer(self.kind, model.parameters())
        lossf = loss_fn(self.kind)
        gc.collect()
        c0, t0 = _CPU(), _PERF()
        model, opt = fabric.setup(model, opt)
        loader = fabric.setup_dataloaders(self.loader())
        model.train()
        first = None
        ends: list[tuple[float, float]] = []
        n = 0
        for i, (x, y) in enumerate(loader):
            if first is None:
                first = (_PERF(), _CPU())
            loss = lossf(model(x), y)
            fabric.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if (i + 1) % 50 == 0:
                loss.item()
            n += 1
            ends.append((_PERF(), _CPU()))
        t1, c1 = _PERF(), _CPU()
        return _times(t0, c0, t1, c1, first, ends, n)

    def _dltrain(self, root: str, *extra: Any) -> dict[str, Any]:
        task = dl_task_cls()(self.kind, self.cfg)
        timer = _CLASSES["dl_timer"]()
        trainer = make_dl_trainer(self.notes, max_epochs=1, accelerator="cpu", devices=1, default_root_dir=root,
                                  callbacks=[timer, *extra])
        loader = self.loader()
        gc.collect()
        c0, t0 = _CPU(), _PERF()
        trainer.fit(task, loader)
        t1, c1 = _PERF(), _CPU()
        ckpts = list(Path(root).rglob("*.ckpt"))
        if not ckpts and "no checkpoint written" not in self.notes:
            self.notes.append("no checkpoint written")
        return _times(t0, c0, t1, c1, timer.first, timer.ends, timer.n)

    def _dltrain_tm(self, root: str) -> dict[str, Any]:
        """dltrain plus `ThroughputMonitor()`: samples/s and data wait (the task does not say its FLOPs)."""
        from dltrain.callbacks import ThroughputMonitor

        return self._dltrain(root, ThroughputMonitor())

    def _dltrain_mfu(self, root: str) -> dict[str, Any]:
        """dltrain plus `ThroughputMonitor` with MFU: FLOPs counted on the first batch, against a nominal peak
        (a CPU has no entry in the monitor's table; the MFU value is not the point, its per-step cost is)."""
        from dltrain.callbacks import ThroughputMonitor

        return self._dltrain(root, ThroughputMonitor(measure_flops=True, peak_flops=_NOMINAL_CPU_PEAK))

    def _lightning(self, root: str) -> dict[str, Any]:
        import lightning.pytorch as pl

        LitTask, PlTimer = pl_classes()
        task = LitTask(self.kind, self.cfg)
        timer = PlTimer()
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, default_root_dir=root, callbacks=[timer])
        loader = self.loader()
        gc.collect()
        c0, t0 = _CPU(), _PERF()
        trainer.fit(task, loader)
        t1, c1 = _PERF(), _CPU()
        if trainer.logger is not None:
            note = f"Lightning default logger: {type(trainer.logger).__name__}"
            if note not in self.notes:
                self.notes.append(note)
        return _times(t0, c0, t1, c1, timer.first, timer.ends, timer.n)


# ------------------------------------------------------------------------------------------- resume (case 5)


def tiny_pair(sample: dict[str, Any]) -> tuple[Any, int]:
    import torch

    return torch.from_numpy(sample["npy"]), sample["cls"]


class ResumeRunner:
    """Case 5: fit(ckpt_path=...) at 10% and 90% of an epoch; time from fit() to the first trained batch."""

    def __init__(self, variant: str, cfg: dict[str, Any], urls: list[str], tmp: str) -> None:
        import torch
        from torch.utils.data import TensorDataset

        self.variant, self.cfg, self.urls = variant, cfg, urls
        self.tmp = tempfile.mkdtemp(prefix=f"resume-{variant}-", dir=tmp)
        self.notes: list[str] = []
        n = cfg["samples"]
        g = torch.Generator().manual_seed(0)
        self.tensors = TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 10, (n,), generator=g))
        nb = len(self._loader())
        self.batches = nb
        self.ckpts: dict[str, str] = {}
        task_cls = dl_task_cls()
        for frac in (0.1, 0.9):
            k = int(frac * nb)
            path = os.path.join(self.tmp, f"at{int(frac * 100)}.ckpt")
            trainer = make_dl_trainer(self.notes, max_epochs=1, accelerator="cpu", devices=1,
                                      default_root_dir=self.tmp, enable_progress_bar=False, logger=False,
                                      enable_checkpointing=False, callbacks=[_CLASSES["dl_saveat"](k, path)])
            trainer.fit(task_cls("tiny", {}), self._loader())
            self.ckpts[f"{int(frac * 100)}"] = path
        self.steps = {p: int(int(p) / 100 * nb) for p in self.ckpts}

    def _loader(self) -> Any:
        from torch.utils.data import DataLoader

        b, w = self.cfg["batch"], self.cfg["workers"]
        if self.variant == "streaming":
            from dltrain.data import StreamingDataset

            ds = StreamingDataset(self.urls, batch_size=b, map=tiny_pair, shuffle=True, shuffle_buffer=1000)
            return ds.loader(num_workers=w)
        return DataLoader(self.tensors, batch_size=b, shuffle=True, num_workers=w)

    def run(self, rep: int, args: dict[str, Any]) -> dict[str, Any]:
        at = str(args["at"])
        root = tempfile.mkdtemp(prefix="run-", dir=self.tmp)
        timer = _CLASSES["dl_timer"](stop_at_first=True)
        task = dl_task_cls()("tiny", {})
        trainer = make_dl_trainer(self.notes, max_epochs=1, accelerator="cpu", devices=1, default_root_dir=root,
                                  enable_checkpointing=False, callbacks=[timer])
        loader = self._loader()
        ckpt = self.ckpts.get(at)
        gc.collect()
        t0 = _PERF()
        trainer.fit(task, loader, ckpt_path=ckpt)
        first = timer.first[0] - t0
        del loader
        gc.collect()
        shutil.rmtree(root, ignore_errors=True)
        expected = self.steps.get(at, 0)
        out = {"first_batch_s": first, "step": timer.first_step, "batch_idx": timer.first_idx,
               "expected_step": expected, "batches": self.batches}
        if timer.first_step != expected:
            out["error"] = f"resumed at step {timer.first_step}, expected {expected}"
        if self.notes:
            out["notes"] = list(self.notes)
        return out


# ------------------------------------------------------------------------------------------- plugins (case 6)


class PluginRunner:
    def __init__(self, variant: str, cfg: dict[str, Any]) -> None:
        self.variant, self.cfg = variant, cfg

    def run(self, rep: int, args: dict[str, Any]) -> dict[str, Any]:
        import importlib

        try:
            mod = importlib.import_module(f"benchlib.{self.variant}")
        except ModuleNotFoundError as err:
            if err.name in (f"benchlib.{self.variant}",):
                return {"skipped": f"scripts/benchlib/{self.variant}.py not present"}
            return {"skipped": f"import failed: {type(err).__name__}: {err}"}
        except Exception as err:
            return {"skipped": f"import failed: {type(err).__name__}: {err}"}
        if not hasattr(mod, "run"):
            return {"skipped": f"scripts/benchlib/{self.variant}.py has no run()"}
        t0 = _PERF()
        try:
            result = mod.run(seconds=float(self.cfg["seconds"]))
        except Exception as err:
            import traceback

            tb = traceback.format_exc(limit=3)
            return {"skipped": f"run() failed: {type(err).__name__}: {err}", "traceback": tb}
        return {"result": _jsonable(result), "wall_s": _PERF() - t0}


# ------------------------------------------------------------------------------------------- CUDA cases


class CudaRunner:
    """ResNet-18 bf16-mixed on synthetic 224px images, and a small GPT: dltrain vs a hand-written loop."""

    def __init__(self, variant: str, kind: str, cfg: dict[str, Any], tmp: str) -> None:
        import torch

        self.variant, self.kind, self.cfg, self.tmp = variant, kind, cfg, tmp
        self.notes: list[str] = []
        g = torch.Generator().manual_seed(0)
        b = cfg["batch"]
        # A few distinct pinned CPU batches, cycled: the loop (not the data pipeline) is what is measured.
        if kind == "resnet":
            self.batches = [(torch.randn(b, 3, cfg["size"], cfg["size"], generator=g).pin_memory(),
                             torch.randint(0, 1000, (b,), generator=g).pin_memory()) for _ in range(4)]
        else:
            v, t = cfg["vocab"], cfg["context"]
            self.batches = []
            for _ in range(4):
                ids = torch.randint(0, v, (b, t + 1), generator=g)
                self.batches.append({"input_ids": ids[:, :-1].contiguous().pin_memory(),
                                     "targets": ids[:, 1:].contiguous().pin_memory(),
                                     "n_bytes": torch.full((b,), 4 * t).pin_memory()})

    def _data(self, n: int) -> list[Any]:
        return [self.batches[i % len(self.batches)] for i in range(n)]

    def _model(self) -> Any:
        if self.kind == "resnet":
            import torchvision

            return torchvision.models.resnet18(num_classes=1000)
        try:
            from dltrain.plugins.text import tasks as text_tasks

            has_lm = hasattr(text_tasks, "LanguageModelTask")
        except Exception:
            has_lm = False
        c = self.cfg
        if has_lm:
            from dltrain.plugins.text.tasks import LanguageModelTask

            return LanguageModelTask(vocab_size=c["vocab"], context_length=c["context"], n_layers=c["layers"],
                                     n_heads=c["heads"], d_model=c["d_model"], warmup_steps=10)
        self.notes.append("dltrain.plugins.text has no LanguageModelTask: used nn.TransformerDecoder")
        return _fallback_gpt(c)

    def run(self, rep: int, args: dict[str, Any]) -> dict[str, Any]:
        """Two fits, of N and 2N steps: per step = (t(2N) - t(N)) / N; fixed per-fit cost = t(N) - N * per step."""
        import torch

        n = self.cfg["steps"]
        out: dict[str, Any] = {}
        torch.cuda.reset_peak_memory_stats()
        for steps, suffix in ((n, ""), (2 * n, "_2n")):
            gc.collect()  # the Trainer and the Task reference each other: free the previous fit's model now
            torch.cuda.empty_cache()
            torch.manual_seed(rep)
            root = tempfile.mkdtemp(prefix=f"{self.kind}-{self.variant}-", dir=self.tmp)
            try:
                r = self._dltrain(root, steps) if self.variant == "dltrain" else self._hand(steps)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            out["t_fit" + suffix] = r["t_fit"]
        out["steps"] = n
        out["t_step"] = (out["t_fit_2n"] - out["t_fit"]) / n
        out["t_fixed"] = out["t_fit"] - n * out["t_step"]
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def _hand(self, steps: int) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        dev = torch.device("cuda")
        model = self._model().to(dev)
        sched = None
        if self.kind == "resnet":
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        elif hasattr(model, "configure_optimizers"):  # LanguageModelTask: AdamW + per-step LambdaLR, as in dltrain
            conf = model.configure_optimizers()
            opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
        data = self._data(steps)
        model.train()
        torch.cuda.synchronize()
        t0 = _PERF()
        for i, batch in enumerate(data):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if self.kind == "resnet":
                    x, y = (t.to(dev, non_blocking=True) for t in batch)
                    loss = F.cross_entropy(model(x), y)
                else:
                    b = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
                    if hasattr(model, "_nats"):  # the same loss and bits-per-byte as LanguageModelTask.training_step
                        nats, n_tok = model._nats(b)
                        loss = nats / n_tok.clamp(min=1)
                        bpb = nats.detach() / (math.log(2) * b["n_bytes"].sum().clamp(min=1))  # noqa: F841
                    else:
                        logits = model(b["input_ids"])
                        loss = F.cross_entropy(logits.flatten(0, 1).float(), b["targets"].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if sched is not None:
                sched.step()
            if (i + 1) % 50 == 0:
                loss.item()
        torch.cuda.synchronize()
        return {"t_fit": _PERF() - t0, "steps": len(data)}

    def _dltrain(self, root: str, steps: int) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        import dltrain

        if self.kind == "resnet":
            net = self._model()

            class ResNetTask(dltrain.Task):
                def __init__(self) -> None:
                    super().__init__()
                    self.net = net

                def training_step(self, batch: Any, batch_idx: int) -> Any:
                    x, y = batch
                    loss = F.cross_entropy(self.net(x), y)
                    self.log("train/loss", loss)
                    return loss

                def configure_optimizers(self) -> Any:
                    return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

            task = ResNetTask()
        else:
            task = self._model()
        trainer = make_dl_trainer(self.notes, max_epochs=1, accelerator="cuda", devices=1,
                                  precision="bf16-mixed", default_root_dir=root)
        data = self._data(steps)
        torch.cuda.synchronize()
        t0 = _PERF()
        trainer.fit(task, data)
        torch.cuda.synchronize()
        return {"t_fit": _PERF() - t0, "steps": len(data)}


def _fallback_gpt(c: dict[str, Any]) -> Any:
    import torch
    from torch import nn

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(c["vocab"], c["d_model"])
            self.pos = nn.Parameter(torch.zeros(c["context"], c["d_model"]))
            layer = nn.TransformerEncoderLayer(c["d_model"], c["heads"], 4 * c["d_model"], batch_first=True,
                                               norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, c["layers"])
            self.head = nn.Linear(c["d_model"], c["vocab"])

        def forward(self, ids: Any) -> Any:
            t = ids.shape[1]
            mask = nn.Transformer.generate_square_subsequent_mask(t, device=ids.device)
            return self.head(self.blocks(self.emb(ids) + self.pos[:t], mask=mask, is_causal=True))

    return GPT()


# ------------------------------------------------------------------------------------------- DDP worker


def ddp_main(spec: dict[str, Any]) -> None:
    """Under torchrun: hand-written DDP loop and dltrain, alternately, in the same two processes."""
    _threads()
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = spec["cfg"]
    mcfg = FULL["loop"]
    b, steps = cfg["batch"], cfg["steps"]
    g = torch.Generator().manual_seed(0)
    n = steps * b * world
    data = TensorDataset(torch.randn(n, mcfg["in_dim"], generator=g), torch.randint(0, 10, (n,), generator=g))
    notes: list[str] = []
    task_cls = dl_task_cls()

    def hand(rep: int, root: str) -> dict[str, Any]:
        model = make_model("mlp", mcfg)
        lossf = loss_fn("mlp")
        c0, t0 = _CPU(), _PERF()
        ddp = DDP(model)
        opt = make_optimizer("mlp", ddp.parameters())
        sampler = DistributedSampler(data, shuffle=True, seed=rep)
        sampler.set_epoch(0)
        loader = DataLoader(data, batch_size=b, sampler=sampler)
        first = None
        ends: list[tuple[float, float]] = []
        k = 0
        for i, (x, y) in enumerate(loader):
            if first is None:
                first = (_PERF(), _CPU())
            loss = lossf(ddp(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if (i + 1) % 50 == 0:
                loss.item()
            k += 1
            ends.append((_PERF(), _CPU()))
        t1, c1 = _PERF(), _CPU()
        return _times(t0, c0, t1, c1, first, ends, k)

    def dl(rep: int, root: str) -> dict[str, Any]:
        task = task_cls("mlp", mcfg)
        timer = _CLASSES["dl_timer"]()
        trainer = make_dl_trainer(notes, max_epochs=1, accelerator="cpu", strategy="ddp", default_root_dir=root,
                                  callbacks=[timer], seed=None)
        loader = DataLoader(data, batch_size=b, shuffle=True)
        c0, t0 = _CPU(), _PERF()
        trainer.fit(task, loader)
        t1, c1 = _PERF(), _CPU()
        return _times(t0, c0, t1, c1, timer.first, timer.ends, timer.n)

    variants = {"hand": hand, "dltrain": dl}
    names = list(variants)
    base = spec["tmp"]
    for rep in range(-1, spec["repeats"]):  # rep -1: warm-up, not reported
        order = names[rep % len(names):] + names[: rep % len(names)] if rep >= 0 else names
        for name in order:
            root = os.path.join(base, f"ddp-{name}-{rep + 1}")
            torch.manual_seed(max(rep, 0))
            dist.barrier()
            gc.collect()
            try:
                out = variants[name](max(rep, 0), root)
            except Exception as err:
                import traceback

                out = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=8)}
            dist.barrier()
            if rank == 0:
                out.update(variant=name, rep=rep, rss_mb=_maxrss_mb(), notes=notes)
                print("BENCH_RESULT " + json.dumps(out), flush=True)
    dist.barrier()
    dist.destroy_process_group()
