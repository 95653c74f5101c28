"""The plugin measurements of scripts/bench (case 6) run against the plugins' current API.

The audio one broke silently when `AudioTransform` began returning a dict: the report only showed "failed".
A short run of each (0.05 s of measuring) keeps such a change from reaching a benchmark run first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))


@pytest.mark.parametrize("plugin", ["vision", "text", "audio"])
def test_plugin_measurement_runs_and_counts_work(plugin):
    import importlib

    pytest.importorskip({"vision": "torchvision", "text": "tokenizers", "audio": "soundfile"}[plugin])
    module = importlib.import_module(f"benchlib.{plugin}")
    result = module.run(seconds=0.05)
    rates: list[float] = []
    for key, value in result.items():
        if "_per_s" in key:  # a rate, or a dict of rates by variant
            rates += list(value.values()) if isinstance(value, dict) else [value]
    assert rates and all(isinstance(v, float) and v > 0 for v in rates), result
