"""The suite's one seed convention (tests/helpers/seeds.py): a randomized test draws from DLTRAIN_TEST_SEED, its
failure report prints the command that replays it, and that command gives the test the same seeds again."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import seeds

REPO = Path(__file__).resolve().parents[1]
PROBE = "tests/helpers/_seed_probe.py"
PLAIN = "tests/helpers/_plain_probe.py"  # a module without seeds


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != seeds.ENV}
    full.update(env, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
                          cwd=REPO, env=full, capture_output=True, text=True, timeout=240)


def _seeds(output: str) -> dict[str, tuple[str, str]]:
    return {m[0]: (m[1], m[2]) for m in re.findall(r"probe (\S+) seed=(\d+) draw=(\S+)", output)}


def test_a_failing_randomized_test_prints_a_replay_that_draws_the_same() -> None:
    # In two xdist workers, as scripts/test runs the suite: they inherit the controller's base seed.
    first = _pytest(PROBE, PLAIN, "-n", "2", "--dist", "loadgroup", DLTRAIN_PROBE_FAIL="1")
    out = first.stdout + first.stderr
    assert first.returncode == 1, out
    drawn = _seeds(out)
    assert set(drawn) == {"module", "fixture-x", "fixture-y"}, out
    assert len({seed for seed, _ in drawn.values()}) == 3, drawn  # each test its own seed
    base = re.search(rf"{seeds.ENV}=(\d+) \(set it to replay", out)
    assert base, out  # the header names the session's base seed
    assert "FAILED tests/helpers/_plain_probe.py::test_not_randomized" in out
    # One replay line per failed randomized test, in its report and in the summary; none for the plain test.
    replays = re.findall(rf"replay with: {seeds.ENV}=(\d+) scripts/test (\S+)", out)
    targets = {t.strip("'") for _, t in replays}
    assert targets == {f"{PROBE}::test_module_level_seed", f"{PROBE}::test_fixture_seed[x]",
                       f"{PROBE}::test_fixture_seed[y]"}, out
    assert {b for b, _ in replays} == {base.group(1)}
    assert "randomized tests that failed" in out

    # The printed command, for one test, in one process: the same seeds and draws; a subset does not change them.
    again = _pytest(f"{PROBE}::test_fixture_seed[y]", f"{PROBE}::test_module_level_seed",
                    **{seeds.ENV: base.group(1)})
    assert again.returncode == 0, again.stdout + again.stderr
    replayed = _seeds(again.stdout)
    assert replayed == {k: drawn[k] for k in ("fixture-y", "module")}, (replayed, drawn)
    assert "randomized tests that failed" not in again.stdout


def test_seed_for_is_a_pure_function_of_the_base_and_the_name(monkeypatch) -> None:
    monkeypatch.setenv(seeds.ENV, "1234")
    a = seeds.seed_for("tests.x", 1)
    assert a == seeds.seed_for("tests.x", 1) and 0 <= a < 2**31
    assert len({a, seeds.seed_for("tests.x", 2), seeds.seed_for("tests.y", 1)}) == 3
    monkeypatch.setenv(seeds.ENV, "1235")
    assert seeds.seed_for("tests.x", 1) != a
    monkeypatch.setenv(seeds.ENV, "twelve")
    try:
        seeds.base_seed()
    except ValueError as err:
        assert seeds.ENV in str(err) and "twelve" in str(err)
    else:
        raise AssertionError("a non-integer DLTRAIN_TEST_SEED was accepted")
