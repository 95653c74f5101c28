"""Apple MPS (skipped elsewhere)."""

from __future__ import annotations

import pytest

from tests.helpers.tasks import TinyTask, loader, quiet_trainer

pytestmark = pytest.mark.mps


def test_mps_trains(tmp_path):
    task = TinyTask()
    trainer = quiet_trainer(tmp_path, accelerator="mps", devices=1, max_epochs=1)
    trainer.fit(task, loader(n=32))
    assert trainer.global_step == 4
    assert next(task.parameters()).device.type == "mps"
