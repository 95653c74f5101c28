"""The examples share their run flags (the same names, defaults and help), show their defaults in --help, answer
--help without importing torch, and still accept the old spellings (issue 28, item 6)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from tests.examples._run import EXAMPLES, example_env, finish, start

COMMON = ("--root-dir", "--data-dir", "--workers", "--no-progress", "--max-epochs", "--max-steps", "--limit-batches",
          "--resume", "--seed", "--batch-size", "--precision", "--accelerator", "--devices")
# Flags whose default is the example's own (its run length, batch size and folder); the rest of their help and
# every other shared flag's whole help line are the same in every example.
OWN_DEFAULT = ("--root-dir", "--max-epochs", "--max-steps", "--batch-size")
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


def test_shared_flags_read_the_same_in_every_example(helps: dict[str, str]) -> None:
    # Before: --limit-batches only in vision, --workers 2 in vision and 1 elsewhere, the accelerator help 'cuda'
    # in two examples and 'gpu' in the others, data under ./runs/vision/data, ./data/kws_digits, <root>/data-<hash>.
    per_example = {name: options(text) for name, text in helps.items()}
    for flag in COMMON:
        texts = {}
        for name, flags in per_example.items():
            text = flags[flag]
            if flag in OWN_DEFAULT:
                text = re.sub(r"\(default: [^)]*\)", "(default: ...)", text)
            texts[name] = re.sub(r"^\S+( [A-Z_]+)?\s+", "", text)  # the flag and its metavar
        assert len(set(texts.values())) == 1, f"{flag} differs between the examples: {texts}"
    assert "<root-dir>/data" in per_example["vision"]["--data-dir"]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_help_answers_before_torch_is_imported(name: str) -> None:
    # `--help` took about 5 s: torch and the plugins were imported before the arguments were parsed. What is
    # imported is checked, not how long it takes.
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{str(EXAMPLES[name])!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(EXAMPLES[name])!r}, run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code\n"
        "print('IMPORTED', sorted(m for m in ('torch', 'dltrain', 'numpy', 'lightning') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=example_env())
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "IMPORTED []" in result.stdout, result.stdout[-500:]


def test_data_dir_is_under_root_dir_unless_given() -> None:
    sys.path.insert(0, str(EXAMPLES["vision"].parents[1]))
    try:
        import _flags
    finally:
        sys.path.remove(str(EXAMPLES["vision"].parents[1]))
    for name in sorted(EXAMPLES):
        if any(importlib.util.find_spec(m) is None for m in NEEDS[name]):
            continue
        parse = _load(name).parse_args
        assert _flags.data_dir(parse(["--root-dir", "somewhere"])) == Path("somewhere") / "data"
        assert _flags.data_dir(parse(["--root-dir", "r", "--data-dir", "d"])) == Path("d")
