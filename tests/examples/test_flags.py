"""The examples share their flag names, show their defaults in --help, and still accept the old spellings."""

from __future__ import annotations

import importlib.util
import re
import sys
from types import ModuleType

import pytest
from tests.examples._run import EXAMPLES, finish, start

COMMON = ("--root-dir", "--workers", "--no-progress", "--max-epochs", "--max-steps", "--resume", "--seed",
          "--batch-size", "--precision", "--accelerator", "--devices")
RENAMED = {"--output-dir": "--root-dir", "--num-workers": "--workers", "--no-progress-bar": "--no-progress",
           "--epochs": "--max-epochs"}
OLD = {  # the spellings each example had before the flags were made the same
    "vision": ("--epochs",),
    "gpt": ("--num-workers", "--no-progress-bar"),
    "classifier": ("--num-workers", "--no-progress-bar"),
    "audio": ("--output-dir", "--num-workers", "--no-progress-bar", "--epochs"),
}
NEEDS = {"vision": ("torchvision",), "gpt": ("tokenizers",), "classifier": ("tokenizers",), "audio": ("soundfile",)}


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """Every example's --help, the four started at once (each imports torch: seconds)."""
    procs = {name: start(name, ["--help"], COLUMNS="200") for name in EXAMPLES}
    return {name: finish(proc, timeout=120)[0] for name, proc in procs.items()}


def options(help_text: str) -> dict[str, str]:
    """``--flag`` -> its help text (continuation lines joined), from argparse's option list."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in help_text.splitlines():
        if m := re.match(r"^  (-\w|--[\w-]+)", line):
            current = entries.setdefault(m.group(1), [])
        elif not line.startswith("   "):
            current = None
        if current is not None:
            current.append(line.strip())
    return {flag: " ".join(lines) for flag, lines in entries.items()}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_common_flags_with_defaults_in_help(helps: dict[str, str], name: str) -> None:
    flags = options(helps[name])
    missing = [f for f in COMMON if f not in flags]
    assert not missing, f"{name}: no {missing} in --help:\n{helps[name]}"
    for flag in ("--root-dir", "--workers", "--seed", "--max-epochs", "--max-steps", "--batch-size", "--precision"):
        assert "default" in flags[flag], f"{name} {flag}: no default shown: {flags[flag]!r}"
    assert "(default: " in flags["--root-dir"] and "(default: " in flags["--workers"]
    for old in RENAMED:
        assert old not in flags, f"{name}: the old spelling {old} is listed in --help"


def _load(name: str) -> ModuleType:
    for needed in NEEDS[name]:
        pytest.importorskip(needed)
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES[name])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(EXAMPLES[name].parent))  # the example's own helpers (corpus.py, digits.py)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES[name].parent))
    return module


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_old_spellings_still_parse(name: str) -> None:
    parse = _load(name).parse_args
    args = ["--root-dir", "r", "--workers", "3", "--no-progress", "--max-epochs", "5", "--resume"]
    spelled_before = {RENAMED[old]: old for old in OLD[name]}
    old_args = [spelled_before.get(a, a) for a in args]
    new, old = parse(args), parse(old_args)
    assert vars(new) == vars(old), old_args
    assert (new.root_dir, new.workers, new.no_progress, new.max_epochs, new.resume) == ("r", 3, True, 5, True)
    defaults = parse([])
    assert defaults.resume is False and defaults.no_progress is False and defaults.workers >= 0
