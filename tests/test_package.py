"""`python -m build` makes a wheel and an sdist that install in a fresh venv and work there (no network).

The build runs without isolation (the venv's setuptools and build: no download); `build` makes the sdist, then
the wheel from the unpacked sdist, so the wheel also proves the sdist is complete. The fresh venvs see the test
venv's site-packages as a plain path (torch, Lightning, ... without reinstalling them), which does not activate
the editable install of this checkout: the dltrain they import is the one just installed. The wheel goes into
one venv, the sdist into another (pip builds it there, again without isolation).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SMOKE = r"""
import json, os, pathlib, subprocess, sys
import torch
from torch.utils.data import DataLoader, TensorDataset
import dltrain

here = pathlib.Path(dltrain.__file__).parent
x = torch.randn(64, 4)
trainer = dltrain.Trainer(max_epochs=1, enable_progress_bar=False, default_root_dir="runs")
trainer.fit(SmokeTask(), DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16))
cli = subprocess.run([os.path.join(os.path.dirname(sys.executable), "dltrain"), "--help"], capture_output=True, text=True)
print(json.dumps({"file": str(here), "version": dltrain.__version__, "typed": (here / "py.typed").is_file(),
                  "plugins": sorted(dltrain.plugins.available()),
                  "cli": cli.returncode == 0 and "shards" in cli.stdout,
                  "ckpt": os.path.exists(trainer.checkpoint_callback.last_model_path)}))
"""

TASK = r"""
import torch
import dltrain

class SmokeTask(dltrain.Task):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
"""


def _venv(path: Path) -> Path:
    # Without pip (and so without the old setuptools ensurepip brings): the test venv's pip installs into it, and
    # the build backend the sdist needs (setuptools>=77) comes from the test venv's packages.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=300)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # The test venv's packages as a plain path entry, after the fresh venv's own (a .pth line is not processed
    # as a site dir, so the editable install's finder in it stays inactive).
    Path(purelib, "test-venv-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _pip_install(python: Path, target: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                             "--no-index",
                             "--no-build-isolation", str(target)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _smoke(python: Path, venv: Path, workdir: Path) -> dict:
    import json

    workdir.mkdir()
    (workdir / "smoke.py").write_text(TASK + "import dltrain.plugins\n" + SMOKE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    result = subprocess.run([str(python), "smoke.py"], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~60 s of CPU: a build, two venvs, two imports of torch; longer on a loaded machine
def test_wheel_and_sdist_install_in_a_fresh_venv_and_work(tmp_path: Path) -> None:
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    dist = tmp_path / "dist"
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    wheel, = dist.glob(f"dltrain-{version}-py3-none-any.whl")
    sdist, = dist.glob(f"dltrain-{version}.tar.gz")

    wheel_files = set(zipfile.ZipFile(wheel).namelist())
    assert {"dltrain/__init__.py", "dltrain/py.typed", "dltrain/plugins/vision/__init__.py"} <= wheel_files
    assert f"dltrain-{version}.dist-info/licenses/LICENSE" in wheel_files
    assert not any(name.startswith(("tests/", "scripts/", "docs/")) for name in wheel_files)
    sdist_files = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "LICENSE", "src/dltrain/py.typed", "src/dltrain/trainer.py"} <= sdist_files

    for kind, target in (("wheel", wheel), ("sdist", sdist)):
        venv = tmp_path / f"venv-{kind}"
        python = _venv(venv)
        _pip_install(python, target)
        found = _smoke(python, venv, tmp_path / f"run-{kind}")
        assert Path(found["file"]).is_relative_to(venv), f"{kind}: imported {found['file']}, not the installed copy"
        assert found["version"] == version, found
        assert found["typed"] and found["cli"] and found["ckpt"], found
        assert {"vision", "text", "audio"} <= set(found["plugins"]), found  # the entry points came along
