"""ThroughputMonitor's tokens/s and model FLOPs utilisation, against FLOPs counted by hand."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tests.callbacks.test_throughput import Clock, FakeTask, _epoch
from tests.helpers.fake_trainer import FakeTrainer
from tests.helpers.tasks import RecordingLogger, TinyTask, loader, quiet_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dltrain
from dltrain.callbacks import ThroughputMonitor
from dltrain.callbacks import throughput as tp
from dltrain.callbacks.throughput import device_peak_flops
from dltrain.errors import ConfigurationError


def mlp_flops_per_sample(sizes: list[int]) -> int:
    """Forward: 2*in*out per Linear. Backward: the weight gradient (2*in*out) for every Linear and the input
    gradient (2*in*out) for all but the first, whose input (the data) needs no gradient."""
    pairs = list(itertools.pairwise(sizes))
    forward = sum(2 * i * o for i, o in pairs)
    return forward + forward + sum(2 * i * o for i, o in pairs[1:])


TINY_MLP = mlp_flops_per_sample([8, 32, 1])  # TinyTask's model: 1216


def block_flops_per_sequence(t: int, d: int) -> int:
    """A pre-norm transformer block's matrix products on one sequence of t tokens of width d, forward: q, k, v
    projections 2*t*d*3d, scores q@k^T 2*t*t*d, attention@v 2*t*t*d, output projection 2*t*d*d, MLP (4d hidden)
    2*t*d*4d twice; 24*t*d^2 + 4*t^2*d. Backward is twice that: every product's operands need gradients (the
    projections' input is a LayerNorm's output, which has weights)."""
    forward = 2 * t * d * 3 * d + 2 * t * t * d + 2 * t * t * d + 2 * t * d * d + 2 * (2 * t * d * 4 * d)
    assert forward == 24 * t * d * d + 4 * t * t * d
    return 3 * forward


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        causal = torch.ones(t, t, dtype=torch.bool).triu(1)
        attn = scores.masked_fill(causal, float("-inf")).softmax(-1) @ v
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class BlockTask(dltrain.Task):
    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.block = Block(d, heads)
        self.d = d

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.block(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def tokens_per_batch(self, batch) -> int:
        return batch[0].shape[0] * batch[0].shape[1]



class BlockTaskSayingFlops(BlockTask):
    def flops_per_batch(self, batch) -> int:
        return batch[0].shape[0] * block_flops_per_sequence(batch[0].shape[1], self.d)


def _fake_trainer(**kw):
    base = dict(global_step=0, log_every_n_steps=2, num_training_batches=float("inf"), world_size=1,
                device=torch.device("cpu"), precision="32-true")
    base.update(kw)
    base.setdefault("data_parallel_size", base["world_size"])  # no tensor parallelism
    return FakeTrainer(**base)


def test_mfu_from_the_tasks_flops_per_batch(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(tp, "perf_counter", clock)
    task = FakeTask()
    task.flops_per_batch = lambda batch: batch.shape[0] * TINY_MLP  # type: ignore[attr-defined]
    task.tokens_per_batch = lambda batch: batch.shape[0] * 5  # type: ignore[attr-defined]
    cb, trainer = ThroughputMonitor(window=4, peak_flops=1e5, prog_bar=True), _fake_trainer(world_size=2)
    cb.on_fit_start(trainer, task)
    _epoch(cb, trainer, task, clock, n=10)  # batches of 8 samples, 0.4 s each (0.1 s of it waiting)
    assert task.last("throughput/flops_per_sec") == pytest.approx(8 * TINY_MLP / 0.4)
    assert task.last("throughput/mfu") == pytest.approx(8 * TINY_MLP / 0.4 / 1e5)  # 0.2432
    assert task.last("throughput/tokens_per_sec") == pytest.approx(40 / 0.4)
    assert task.last("throughput/global_tokens_per_sec") == pytest.approx(2 * 40 / 0.4)
    assert task.last("throughput/epoch_mfu") == pytest.approx(8 * TINY_MLP / 0.4 / 1e5)
    bar = {n for n, _, kw in task.logged if kw.get("prog_bar")}
    assert {"throughput/mfu", "throughput/tokens_per_sec"} <= bar


def test_no_flops_no_mfu(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(tp, "perf_counter", clock)
    cb, task, trainer = ThroughputMonitor(window=4), FakeTask(), _fake_trainer()
    cb.on_fit_start(trainer, task)  # no peak needed: nothing to measure against it
    _epoch(cb, trainer, task, clock, n=4)
    names = {n for n, _, _ in task.logged}
    assert not any("mfu" in n or "flops" in n or "tokens" in n for n in names), names


def test_measured_flops_of_an_mlp_equal_the_hand_count_and_give_the_mfu(tmp_path):
    rec = RecordingLogger()
    monitor = ThroughputMonitor(window=4, measure_flops=True, peak_flops=1e9)
    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=2, logger=rec, callbacks=[monitor])
    trainer.fit(TinyTask(), loader(n=96))  # 12 batches of 8
    assert monitor.flops_per_sample == TINY_MLP
    samples, flops, mfu = (dict(rec.values(f"throughput/{k}")) for k in ("samples_per_sec", "flops_per_sec", "mfu"))
    assert sorted(mfu) == [2, 4, 6, 8, 10, 12]
    for step in mfu:
        assert flops[step] == pytest.approx(samples[step] * TINY_MLP, rel=1e-5)  # logged as float32
        assert mfu[step] == pytest.approx(flops[step] / 1e9, rel=1e-5)
        assert 0 < mfu[step] < 1


def test_transformer_block_measured_and_said_flops_agree_with_the_hand_count(tmp_path):
    t, d = 8, 16
    data = DataLoader(TensorDataset(torch.randn(24, t, d)), batch_size=4)
    measured = ThroughputMonitor(window=3, measure_flops=True, peak_flops=1e9)
    quiet_trainer(tmp_path, max_steps=3, callbacks=[measured]).fit(BlockTask(d), data)
    assert measured.flops_per_sample == block_flops_per_sequence(t, d)

    rec = RecordingLogger()
    said = ThroughputMonitor(window=3, peak_flops=1e9)
    trainer = quiet_trainer(tmp_path, max_steps=6, log_every_n_steps=3, logger=rec, callbacks=[said])
    trainer.fit(BlockTaskSayingFlops(d), data)
    assert said.flops_per_sample is None  # the task's count was used, nothing measured
    tokens, flops, mfu = (dict(rec.values(f"throughput/{k}")) for k in ("tokens_per_sec", "flops_per_sec", "mfu"))
    assert sorted(mfu) == [3, 6]
    for step in mfu:
        per_token = block_flops_per_sequence(t, d) / t
        assert flops[step] == pytest.approx(tokens[step] * per_token, rel=1e-5)
        assert mfu[step] == pytest.approx(flops[step] / 1e9, rel=1e-5)


def test_unknown_peak_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigurationError, match=r"peak FLOP/s of 'cpu'.*ThroughputMonitor\(peak_flops=") as err:
        quiet_trainer(tmp_path, max_steps=1, callbacks=[ThroughputMonitor(measure_flops=True)]).fit(
            TinyTask(), loader(n=16))
    assert "not in dltrain's table" in str(err.value)
    with pytest.raises(ConfigurationError, match="does not say its FLOPs"):
        quiet_trainer(tmp_path, max_steps=1, callbacks=[ThroughputMonitor(peak_flops=1e12)]).fit(
            TinyTask(), loader(n=16))
    with pytest.raises(ConfigurationError, match="peak_flops=0"):
        ThroughputMonitor(peak_flops=0)


def test_peak_table(monkeypatch):
    assert device_peak_flops("cpu", "bf16-mixed") is None
    names = {"cuda:0": "NVIDIA H100 80GB HBM3"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: names["cuda:0"])
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")
    assert device_peak_flops("cuda:0", "bf16-mixed") == pytest.approx(989.5e12)
    assert device_peak_flops("cuda:0", "32-true") == pytest.approx(67e12)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")  # TF32 allowed
    assert device_peak_flops("cuda:0", "32-true") == pytest.approx(494.5e12)
    for name, precision, want in [("NVIDIA H100 PCIe", "16-mixed", 756.5e12), ("NVIDIA H200", "bf16-true", 989.5e12),
                                  ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312e12), ("NVIDIA A10", "bf16-mixed", 125e12),
                                  ("NVIDIA L4", "bf16-mixed", 121e12), ("NVIDIA L40S", "bf16-mixed", 362.05e12),
                                  ("Tesla V100-PCIE-16GB", "16-mixed", 112e12), ("Tesla T4", "bf16-mixed", None),
                                  ("NVIDIA GeForce GTX 1080", "32-true", None)]:
        names["cuda:0"] = name
        got = device_peak_flops("cuda:0", precision)
        assert got == (pytest.approx(want) if want else None), name
