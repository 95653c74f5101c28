"""`dltrain.FaultTolerant`'s specification, the lighthouse (in-process and ``dltrain lighthouse``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

import dltrain
from dltrain.callbacks import GradientAccumulationScheduler
from dltrain.errors import ConfigurationError
from dltrain.strategies import FaultTolerant
from tests.helpers.tasks import TinyTask, loader, quiet_trainer


def test_spec_reads_the_environment_and_checks_ranges():
    env = {"REPLICA_GROUP_ID": "1", "NUM_REPLICA_GROUPS": "3", "TORCHFT_LIGHTHOUSE": "http://h:1"}
    spec = dltrain.FaultTolerant(min_replicas=2).resolved(env)
    assert (spec.replica_group, spec.replica_groups, spec.lighthouse, spec.min_replicas) == (1, 3, "http://h:1", 2)
    given = FaultTolerant(replica_groups=2, replica_group=0, lighthouse="http://x:2").resolved({})
    assert (given.replica_group, given.replica_groups, given.lighthouse) == (0, 2, "http://x:2")
    with pytest.raises(ConfigurationError, match="REPLICA_GROUP_ID"):
        FaultTolerant().resolved({"NUM_REPLICA_GROUPS": "2", "TORCHFT_LIGHTHOUSE": "http://h:1"})
    with pytest.raises(ConfigurationError, match="TORCHFT_LIGHTHOUSE"):
        FaultTolerant().resolved({"NUM_REPLICA_GROUPS": "2", "REPLICA_GROUP_ID": "0"})
    with pytest.raises(ConfigurationError, match="numbered 0 to 1"):
        FaultTolerant().resolved({**env, "NUM_REPLICA_GROUPS": "2", "REPLICA_GROUP_ID": "2"})
    with pytest.raises(ConfigurationError, match="min_replicas=4"):
        FaultTolerant(min_replicas=4).resolved(env)
    with pytest.raises(ConfigurationError, match="not a whole number"):
        FaultTolerant().resolved({**env, "REPLICA_GROUP_ID": "one"})
    with pytest.raises(ConfigurationError, match="timeout"):
        FaultTolerant(timeout=0)


def test_lighthouse_in_process_and_its_command():
    pytest.importorskip("torchft")
    from dltrain.lighthouse import Lighthouse

    with Lighthouse(min_replicas=1, heartbeat_timeout=1.0) as lighthouse:
        assert lighthouse.address.startswith("http://")
    with pytest.raises(ConfigurationError, match="min_replicas"):
        Lighthouse(min_replicas=0)
    # The command prints the address to export, serves until SIGTERM and stops cleanly.
    proc = subprocess.Popen([sys.executable, "-m", "dltrain.cli", "lighthouse", "--min-replicas", "2", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "lighthouse at http://" in first and "export TORCHFT_LIGHTHOUSE=http://" in first, first
        assert "(min 2 replica groups)" in first
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "lighthouse stopped" in out, out


class _Manual(TinyTask):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        self.manual_backward(loss)
        opt.step()
        opt.zero_grad()


class _TwoOptimizers(TinyTask):
    def configure_optimizers(self):
        half = len(list(self.parameters())) // 2
        params = list(self.parameters())
        return [torch.optim.SGD(params[:half], lr=0.1), torch.optim.SGD(params[half:], lr=0.1)]


@pytest.mark.filterwarnings("ignore:.*no val_dataloader")
def test_what_replica_groups_do_not_support_is_refused_before_training(tmp_path):
    """Manual optimization, several optimizers, gradient accumulation (also scheduled), FSDP2 inside a group:
    each refused with what to do, before the lighthouse is contacted (the address below serves nothing) or a
    batch is trained."""
    pytest.importorskip("torchft")
    with pytest.raises(ConfigurationError, match="only 'ddp' inside a replica group"):
        FaultTolerant(strategy="fsdp2")
    spec = FaultTolerant(replica_groups=1, replica_group=0, lighthouse="http://127.0.0.1:9")
    cases = [(_Manual(), {}, "manual optimization"), (_TwoOptimizers(), {}, "several optimizers need manual"),
             (TinyTask(), {"accumulate_grad_batches": 2}, "accumulate_grad_batches=2"),
             (TinyTask(), {"callbacks": [GradientAccumulationScheduler({1: 2})]}, "GradientAccumulationScheduler")]
    for task, kwargs, message in cases:
        trainer = quiet_trainer(tmp_path, strategy=spec, max_steps=2, **kwargs)
        with pytest.raises(ConfigurationError, match=message):
            trainer.fit(task, loader())
        assert trainer.global_step == 0 and trainer.fault_tolerance is None
