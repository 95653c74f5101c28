"""Lightning scripts run twice: as written (lightning.pytorch) and after the import rename only (dltrain).

Each script in ``scripts/`` is written against ``lightning.pytorch`` with data generated in the script, CPU only,
no shuffling (the same data order under both), and prints its final metrics as JSON on its last line. The test
applies the rename of issue 13 (the only change a Lightning user makes), runs both in subprocesses and compares.
The subprocesses are forked from two servers that imported Lightning, or dltrain, once (tests/helpers/
forkserver.py): each script still starts from a fresh interpreter's state, without paying the imports 22 times.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.helpers.forkserver import ForkServer

SCRIPTS = Path(__file__).parent / "scripts"

# The rename, applied to the whole text (whole words; the longer names first).
RENAMES: list[tuple[str, str]] = [
    (r"\bfrom lightning\.pytorch\.cli import\b", "from dltrain import"),
    (r"\blightning\.pytorch\.callbacks\b", "dltrain.callbacks"),
    (r"\blightning\.pytorch\.loggers\b", "dltrain.loggers"),
    (r"\bfrom lightning\.pytorch import\b", "from dltrain import"),
    (r"\bLightningDataModule\b", "DataModule"),
    (r"\bLightningModule\b", "Task"),
    (r"\bLightningCLI\b", "CLI"),
    (r"\bTQDMProgressBar\b", "ProgressBar"),
]


def rename(source: str) -> str:
    """Lightning's imports and class names -> dltrain's (README "Coming from Lightning")."""
    for pattern, replacement in RENAMES:
        source = re.sub(pattern, replacement, source)
    return source


def test_rename():
    src = (
        "from lightning.pytorch import LightningModule, LightningDataModule, Trainer\n"
        "from lightning.pytorch.callbacks import TQDMProgressBar, BaseFinetuning\n"
        "from lightning.pytorch.loggers import CSVLogger\nfrom lightning.pytorch.cli import LightningCLI\n"
        "class M(LightningModule): pass\n"
    )
    assert rename(src) == (
        "from dltrain import Task, DataModule, Trainer\n"
        "from dltrain.callbacks import ProgressBar, BaseFinetuning\n"
        "from dltrain.loggers import CSVLogger\nfrom dltrain import CLI\n"
        "class M(Task): pass\n"
    )


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    """One fork server per side, each having imported its library (and torch) once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PL_DISABLE_FORK": "1"}
    root = tmp_path_factory.mktemp("fork-servers")
    made = {"lightning": ForkServer(["torch", "lightning.pytorch"], env, root / "lightning"),
            "dltrain": ForkServer(["torch", "dltrain"], env, root / "dltrain")}
    yield made
    for server in made.values():
        server.close()


def run_script(server: ForkServer, source: str, cwd: Path, args: list[str]) -> dict:
    path = cwd / "script.py"
    path.write_text(source)
    done = server.run(path, args, cwd=cwd, timeout=240)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-25:]
        raise AssertionError("script failed:\n" + "\n".join(tail))
    return json.loads(done.stdout.strip().splitlines()[-1])


def _missing(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"dltrain lacks: {reason}")


# script -> (command-line arguments, marks). The xfail reasons say what dltrain is missing for it (issue 13).
CASES: dict[str, tuple[list[str], list[pytest.MarkDecorator]]] = {
    "a_datamodule": ([], []),
    "b_cli": ([], []),
    "c_gan": ([], []),
    "d_finetuning": ([], []),
    "e_rl_iterable": ([], []),
    "f_multi_val": ([], []),
    "g_profiler": ([], []),
    "h_hook_order": ([], []),
    "i_hparams_checkpoint": ([], []),
    "j_limits": ([], []),
    "k_predict": ([], []),
}


@pytest.mark.slow  # two runs per script, forked from servers that imported Lightning or dltrain once
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=marks, id=n) for n, (_, marks) in sorted(CASES.items())]
)
def test_same_results_after_rename(name, tmp_path, servers):
    source = (SCRIPTS / f"{name}.py").read_text()
    args = CASES[name][0]
    (tmp_path / "lightning").mkdir()
    (tmp_path / "dltrain").mkdir()
    expected = run_script(servers["lightning"], source, tmp_path / "lightning", args)
    got = run_script(servers["dltrain"], rename(source), tmp_path / "dltrain", args)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        else:
            assert got[key] == value, key
