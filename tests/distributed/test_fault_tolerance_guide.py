"""docs/guides/fault-tolerance.md's commands, as the page writes them (issue 24).

The page's ``make_data.py`` and ``train.py`` blocks are written to a fresh folder, and its console commands run
there as they are written: ``dltrain lighthouse ...`` (on a free port instead of 29510, so that this test does not
depend on that port being free), the ``export`` line with the address the lighthouse printed in place of
``http://myhost:29510``, the two ``torchrun`` lines at once (2 replica groups of 2 processes), then
``dltrain audit runs/ft``. Checked: the lighthouse prints the line the page shows; both groups finish, met in a
quorum of 2 groups, and hold the same final weights; the audit exits 0 and counts every sample of every epoch once;
the lighthouse stops on SIGTERM. The README's section shows the same commands (checked to be the same text).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.docs.test_code_blocks import blocks
from tests.helpers.distributed import REPO, free_port
from tests.helpers.replicas import _kill

GUIDE = REPO / "docs" / "guides" / "fault-tolerance.md"
ADDRESS = "http://myhost:29510"


def _page() -> tuple[str, str, list[str]]:
    """The page's make_data.py and train.py, and its console commands (without the prompt) in order."""
    found = blocks(GUIDE)
    python = [b.code for b in found if b.is_python]
    make_data = next(code for code in python if code.startswith("# make_data.py"))
    train = next(code for code in python if 'if __name__ == "__main__":' in code)
    commands = [line[2:].strip() for b in found if b.info == "console" for line in b.code.splitlines()
                if line.startswith("$ ")]
    return make_data, train, commands


def test_the_readme_shows_the_guide_commands():
    """The README's section repeats the page's launch commands: the same text, so that this test runs both."""
    readme = [line[2:].strip() for b in blocks(REPO / "README.md") if b.info == "console"
              for line in b.code.splitlines() if line.startswith("$ ")]
    lighthouse = [c for c in readme if c.startswith("dltrain lighthouse ")]
    assert lighthouse, "README.md: no dltrain lighthouse command"
    section = readme[readme.index(lighthouse[0]):]
    assert section == [c for c in _page()[2] if not c.startswith("dltrain audit ")], section


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_guide_commands_train_two_groups_and_the_audit_accounts_for_every_sample(tmp_path):
    pytest.importorskip("torchft")
    make_data, train, commands = _page()
    lighthouse_cmd = next(c for c in commands if c.startswith("dltrain lighthouse "))
    export = next(c for c in commands if c.startswith("export "))
    torchruns = [c for c in commands if " torchrun " in c]
    audit_cmd = next(c for c in commands if c.startswith("dltrain audit "))
    assert len(torchruns) == 2 and f"--port {ADDRESS.rsplit(':', 1)[1]}" in lighthouse_cmd, commands

    (tmp_path / "make_data.py").write_text(make_data)
    (tmp_path / "train.py").write_text(train)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "REPLICA_GROUP_ID", "NUM_REPLICA_GROUPS", "TORCHFT_LIGHTHOUSE"):
        env.pop(var, None)
    subprocess.run([sys.executable, "make_data.py"], cwd=tmp_path, env=env, check=True, timeout=300)

    lighthouse = subprocess.Popen(shlex.split(lighthouse_cmd.replace("--port 29510", f"--port {free_port()}")),
                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    groups: list[subprocess.Popen[str]] = []
    try:
        assert lighthouse.stdout is not None
        first = lighthouse.stdout.readline()
        printed = re.fullmatch(r"\[dltrain\] lighthouse at (http://\S+) \(min 1 replica groups\); "
                               r"export TORCHFT_LIGHTHOUSE=(http://\S+)\n", first)
        assert printed and printed.group(1) == printed.group(2), first
        address = printed.group(1)
        for cmd in torchruns:
            groups.append(subprocess.Popen(["bash", "-c", f"{export.replace(ADDRESS, address)}\n{cmd}"],
                                           cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True, start_new_session=True))
        outputs = [g.communicate(timeout=800)[0] for g in groups]
        for g, (proc, out) in enumerate(zip(groups, outputs)):
            assert proc.returncode == 0, f"replica group {g} failed:\n{out[-6000:]}"
            assert f"[dltrain] replica group {g}: quorum of 2/2 groups" in out, out[-6000:]
        lighthouse.send_signal(signal.SIGTERM)
        rest, _ = lighthouse.communicate(timeout=120)
        assert lighthouse.returncode == 0 and "[dltrain] lighthouse stopped" in rest, rest
    finally:
        _kill([p for p in [lighthouse, *groups] if p.poll() is None])

    # Group 0 wrote the checkpoint of the run's end (the weights of both groups are compared at every step by
    # test_fault_tolerance.py); its step count is that of one data-parallel job over the 4 processes.
    ckpts = sorted((tmp_path / "runs" / "ft").rglob("*.ckpt"))
    assert ckpts, "group 0 wrote no checkpoint"
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)
    step = state["loops"]["global_step"]
    assert step == 4 * 512 // (8 * 4), step  # 4 epochs of 512 samples, 4 ranks of 8 per batch

    audit = subprocess.run(shlex.split(audit_cmd), cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    report = subprocess.run([*shlex.split(audit_cmd), "--json"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    epochs = json.loads(report.stdout)["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3], epochs
    for e in epochs:
        assert e["finished"] and e["planned"] == e["seen"] == 512 and e["duplicates"] == 0 and not e["not_trained"], e
