"""``dltrain.seed_everything`` takes Lightning's arguments (``seed_everything(42, workers=True)`` is how Lightning's
docs and templates start; it was a TypeError here)."""

from __future__ import annotations

import inspect
import random

import numpy as np
import torch
from lightning.pytorch import seed_everything as lightning_seed_everything

import dltrain


def test_lightning_signature_and_what_it_seeds(monkeypatch):
    ours = inspect.signature(dltrain.seed_everything).parameters
    assert list(ours) == list(inspect.signature(lightning_seed_everything).parameters)
    assert dltrain.seed_everything(42, workers=True) == 42
    drawn = (random.random(), np.random.rand(), torch.rand(1))
    assert dltrain.seed_everything(42, workers=False, verbose=True) == 42
    assert drawn == (random.random(), np.random.rand(), torch.rand(1))
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")  # no seed given: Lightning's environment variable
    assert dltrain.seed_everything() == 5
