"""tests/helpers/forkserver.py: a script run by the fork server sees its own argv, working directory, stdout and
stderr, and exits with its own code; a hang is killed at the timeout and the next script gets a new server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.forkserver import ForkServer

SCRIPT = """
import json, os, sys, time
mode = sys.argv[1]
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "main": __name__, "json_loaded": "json" in sys.modules}))
print("to stderr", file=sys.stderr)
if mode == "exit3":
    sys.exit(3)
if mode == "raise":
    raise ValueError("broken script")
if mode == "hang":
    time.sleep(600)
"""


def test_scripts_run_as_fresh_interpreters_would(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    server = ForkServer(["json"], dict(os.environ), tmp_path / "server")
    try:
        runs = {}
        for mode in ("ok", "exit3", "raise"):
            (tmp_path / mode).mkdir()
            runs[mode] = server.run(script, [mode, "x y"], cwd=tmp_path / mode, timeout=60)
        ok = runs["ok"]
        assert ok.returncode == 0 and ok.stderr == "to stderr\n", ok
        assert ok.stdout.strip() == (f'{{"argv": ["ok", "x y"], "cwd": "{tmp_path / "ok"}", "main": "__main__", '
                                     '"json_loaded": true}')
        assert runs["exit3"].returncode == 3
        assert runs["raise"].returncode == 1 and "ValueError: broken script" in runs["raise"].stderr
        (tmp_path / "hang").mkdir()
        with pytest.raises(AssertionError, match="no answer within 2 s while running"):
            server.run(script, ["hang"], cwd=tmp_path / "hang", timeout=2)
        again = server.run(script, ["ok"], cwd=tmp_path / "ok", timeout=60)  # a new server
        assert again.returncode == 0 and '"argv": ["ok"]' in again.stdout
    finally:
        server.close()
