"""Suite-wide settings: accelerator-only tests are skipped where the accelerator is absent; wandb stays offline;
randomized tests take their seeds from ``DLTRAIN_TEST_SEED`` and say how to replay a failure
(`tests.helpers.seeds`); under pytest-xdist (``scripts/test``: ``-n 2 --dist loadgroup``) the tests listed in
``_GROUPS`` share a worker and the slowest tests start first."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import seeds

# The S3 test server (moto on 127.0.0.1) and its fault-injecting proxy: fixtures s3_server, s3, s3_faults.
pytest_plugins = ["tests.helpers.s3"]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# Test files whose tests must run in one xdist worker: a session fixture does their work (the kill runs start with
# the session and every test waits for its own), uninterrupted reference runs kept under the worker's basetemp
# (`tmp_path_factory.getbasetemp()`) for the file's other tests, or a module fixture too costly to build in both
# workers (a fit, the example scripts started). Everything else is scheduled test by test. (xdist's own
# `xdist_group` marker does nothing with pytest 9: pytest-xdist 3.8 renames `Item._nodeid`, which pytest 9 no
# longer reads; hence this list, read by the scheduler below.)
_GROUPS = {
    "tests/distributed/test_kill_random.py": "kill_random",
    "tests/distributed/test_fsdp2.py": "fsdp2_references",
    "tests/storage/test_remote_sharded.py": "fsdp2_references",  # compares with test_fsdp2's reference run
    "tests/distributed/test_tensor_parallel.py": "tp_references",
    "tests/distributed/test_preemption.py": "preemption_references",
    "tests/distributed/test_resume.py": "resume_references",
    "tests/callbacks/test_ledger.py": "ledger_clean_run",
    "tests/callbacks/test_ledger_mixture.py": "ledger_mixture_run",
    "tests/examples/test_flags.py": "example_helps",
    "tests/lightning_compat/test_lightning_compat.py": "lightning_compat_servers",
    "tests/plugins/text/test_text_tasks.py": "text_lm_data",
    # replica groups, their lighthouses and torchrun launches: one at a time, in one worker
    "tests/distributed/test_fault_tolerance.py": "fault_tolerance",
    "tests/distributed/test_fault_tolerance_guide.py": "fault_tolerance",
    "tests/scripts/test_bench_ft.py": "fault_tolerance",
}


def pytest_configure(config: pytest.Config) -> None:
    seeds.base_seed()  # drawn here, before xdist starts its workers, which inherit it through the environment
    config.addinivalue_line("markers", "randomized: draws its inputs from DLTRAIN_TEST_SEED (set automatically)")
    if getattr(config.option, "dist", "no") in ("load", "worksteal"):
        # `-n 2` alone means `--dist load`, which would run a group's tests (and its session fixture) in both
        # workers; the workers re-read the command line, so it cannot be changed here.
        raise pytest.UsageError(f"--dist {config.option.dist} would split the tests that share a session fixture "
                                "over the workers: use --dist loadgroup (scripts/test does)")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: absent with -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """One work unit per group of `_GROUPS`, one per test otherwise. Units go out biggest first, then in
        collection order (which `_cost_rank` sorted slowest first)."""

        def _split_scope(self, nodeid: str) -> str:
            return _GROUPS.get(nodeid.split("::")[0], nodeid)

    return GroupScheduling(config, log)


def pytest_report_header(config: pytest.Config) -> str:
    return f"randomized tests: {seeds.ENV}={seeds.base_seed()} (set it to replay a session's draws)"


def _is_randomized(item: pytest.Item) -> bool:
    """Marked ``randomized``, asks for ``random_seed``, or its module derived a seed (at import, or by now)."""
    module = getattr(item, "module", None)
    return (item.get_closest_marker("randomized") is not None or "random_seed" in getattr(item, "fixturenames", ())
            or (module is not None and module.__name__ in seeds.used))


def _cost_rank(item: pytest.Item) -> int:
    """Longest first, so that the two workers finish together: the kill runs, the other slow tests, the other
    multi-process tests, then the rest (the sort is stable: collection order within each)."""
    if _GROUPS.get(item.nodeid.split("::")[0]) == "kill_random":
        return 0
    if item.get_closest_marker("slow") is not None:
        return 1
    if item.get_closest_marker("distributed") is not None:
        return 2
    return 3


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "mps" in item.keywords and not has_mps:
            item.add_marker(pytest.mark.skip(reason="needs an Apple MPS device"))
        if _is_randomized(item):
            item.add_marker(pytest.mark.randomized)
    if config.getvalue("dist") != "no" or hasattr(config, "workerinput"):  # the xdist controller, or a worker
        items.sort(key=_cost_rank)
        # Two workers share the two cores: a multi-process test may take up to twice its time alone, so the hang
        # guard (pyproject's 300 s) is doubled for them unless the test sets its own.
        for item in items:
            if _cost_rank(item) < 3 and item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(600))


@pytest.fixture
def random_seed(request: pytest.FixtureRequest) -> int:
    """This test's seed, derived from ``DLTRAIN_TEST_SEED`` and the test's id (a failure prints the replay)."""
    return seeds.seed_for(request.node.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed and _is_randomized(item):
        report.sections.append(("replay", f"replay with: {seeds.replay_command(item.nodeid)}"))
    return report


_failed_randomized: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Runs in the xdist controller too, with the workers' reports: the replay lines for the summary.
    if report.failed:
        _failed_randomized.extend(text for title, text in report.sections if title == "replay")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _failed_randomized:
        terminalreporter.section("randomized tests that failed")
        for line in dict.fromkeys(_failed_randomized):
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _no_process_group_leaks():
    """A test that leaves a default process group behind (an in-process fit with a strategy that initialises
    torch.distributed) changes the rank every later test resolves: fail it by name, and clean up."""
    yield
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        pytest.fail("the test left a torch.distributed process group initialised: destroy it at its end "
                    "(later tests would read its rank and world size)")


@pytest.fixture(autouse=True)
def _own_wandb_service():
    """Processes a test starts get their own wandb service, as separate jobs do.

    An in-process wandb run (an earlier test in this worker) sets WANDB_SERVICE in this process; inherited, it
    makes a test's child processes clients of that one service, which may still hold a killed child's run id.
    """
    os.environ.pop("WANDB_SERVICE", None)
    yield
