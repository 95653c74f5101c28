"""scripts/benchlib's data-case key check, and the peer loaders (LitData, mosaic) where the bench extra is installed
(scripts/bench's .venv/bench; skipped in the plain dev env, where they are not)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from benchlib.datacase import epoch_check, prepare, tar_samples


def test_epoch_check_counts_duplicates_missing_and_unknown_keys() -> None:
    expected = {"a", "b", "c", "d"}
    assert epoch_check(["d", "b", "a", "c"], expected)["exactly_once"]
    check = epoch_check(["a", "a", "a", "b", "x"], expected)
    assert (check["delivered"], check["distinct"], check["duplicates"], check["missing"], check["unknown"]) == (
        5, 3, 2, 2, 1)
    assert not check["exactly_once"]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    tmp = tmp_path_factory.mktemp("images")
    prepare({"tmp": str(tmp), "data": {"samples": 150, "shards": 3}})
    urls = sorted(str(p) for p in (tmp / "images").glob("*.tar"))
    assert [len(list(tar_samples(u))) for u in urls] == [50, 50, 50]
    return urls


@pytest.mark.parametrize("peer", ["litdata", "mosaic"])
def test_peer_loaders_deliver_each_image_once_per_epoch_and_resume_exactly(
        peer: str, images: list[str], tmp_path: Path) -> None:
    if importlib.util.find_spec({"litdata": "litdata", "mosaic": "streaming"}[peer]) is None:
        pytest.skip(f"{peer} is in pyproject's bench extra, installed by scripts/bench into .venv/bench only")
    from benchlib.peers import PeerDataRunner, PeerResumeRunner

    cfg = {"batch": 16, "epochs": 2, "pause_s": 0.0, "workers": 0}
    out = PeerDataRunner(peer, cfg, images, str(tmp_path)).run(0, {"workers": 0})
    assert out["samples"] == [150, 150] and out["files"] >= 1
    assert [e["exactly_once"] for e in out["epochs_checked"]] == [True, True], out["epochs_checked"]
    resume = PeerResumeRunner(peer, cfg, images, str(tmp_path))  # the converted data is reused
    assert {at: c["exactly_once"] for at, c in resume.checks.items()} == {"10": True, "90": True}
    assert resume.checks["90"]["resumed_samples"] < resume.checks["10"]["resumed_samples"] < 150
    assert "error" not in resume.run(0, {"at": "90"})
