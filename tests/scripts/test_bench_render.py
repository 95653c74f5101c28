"""scripts/benchlib's rendering: results (a dict as a bench run stores it) -> summary rows, figures, plots, report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from benchlib import render
from benchlib.orchestration import Bench

PNG = b"\x89PNG\r\n\x1a\n"


def _loop_runs(step_s: dict[str, list[float]]) -> dict[str, list[dict[str, float]]]:
    """Runs of the loop case: one per round, the median CPU step given per variant and round."""
    return {v: [{"rep": i, "c_step_med": s} for i, s in enumerate(steps)] for v, steps in step_s.items()}


def _results() -> dict:
    return {
        # Paired ratios of dltrain: 1.1/1.0, 2.0/2.0, 3.3/3.0 -> 1.1, 1.0, 1.1: median 1.1 (an unpaired median of
        # medians would give 2.0/2.0 = 1.0). A failed run has no pair.
        "loop": {**_loop_runs({"hand": [1.0, 2.0, 3.0], "dltrain": [1.1, 2.0, 3.3], "fabric": [1.2, 2.4, 3.6]}),
                 "hand:warmup": [{"rep": -1, "c_step_med": 9.0}]},
        "data": {"streaming/2": [{"rep": 0, "samples_per_s": 900.0}, {"rep": 1, "samples_per_s": 1100.0}],
                 "webloader/2": [{"rep": 0, "samples_per_s": 1000.0}, {"error": "boom", "rep": 1}]},
        "gpt": {"hand": [{"rep": 0, "t_step": 0.5, "mfu": 0.40}],
                "dltrain": [{"rep": 0, "t_step": 0.25, "mfu": 0.41}]},
    }


def test_figures_summary_plots_and_report_from_a_results_dict(tmp_path: Path) -> None:
    cfg = {"gpt": {"batch": 2, "context": 4}}
    figs = render.figures(_results(), cfg)
    assert figs["ratio"]["loop"]["dltrain"] == pytest.approx([1.1, 1.0, 1.1])
    assert figs["ratio"]["loop"]["fabric"] == pytest.approx([1.2, 1.2, 1.2])
    assert set(figs["ratio"]["loop"]) == {"dltrain", "fabric"}  # neither the baseline nor the warm-up
    assert figs["loaders"] == {"2": {"streaming": 1000.0, "webloader": 1000.0}}  # the failed run left out
    assert figs["gpu"]["gpt"]["dltrain"] == {"per_s": 32.0, "unit": "tokens/s", "mfu": pytest.approx(0.41)}
    assert figs["gpu"]["gpt"]["hand"]["per_s"] == 16.0

    rows = [render.headline("loop", "1. loop", "1.100x", "Fabric 1.200x", "<= 1.03x", "MISS")]
    table = render.summary_table(rows)
    assert table[0] == "| figure | dltrain | best peer | limit or target | verdict |"
    assert table[2] == "| 1. loop | 1.100x | Fabric 1.200x | <= 1.03x | **MISS** |"

    plots = render.write_plots(json.loads(json.dumps(figs)), tmp_path / "plots", {"loop": 1.03})
    assert set(plots) == {"ratio", "loaders", "gpu"}
    for path in plots.values():
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, path

    meta = {"command": "scripts/bench", "date": "d", "cpu": "c", "cores": "2", "load": "1 1 1", "load_end": "2 2 2",
            "gpu": "none", "python": "3", "torch": "t", "lightning": "l", "webdataset": "w", "dltrain": "x",
            "git": "g", "elapsed_s": 60.0}
    doc = {"meta": meta, "headlines": rows, "verdicts": [["1. loop", "1.100", "<= 1.03", "MISS"]], "notes": [],
           "sections": ["### 1. the loop section\n"], "figures": figs}
    text = render.report(doc, plots, tmp_path / "report.md")
    assert text.index("| 1. loop | 1.100x |") < text.index("](plots/ratio.png)") < text.index("### 1. the loop")
    assert "Targets missed in this run: 1. loop." in text


def test_no_gpu_plot_without_cuda_results(tmp_path: Path) -> None:
    results = _results()
    del results["gpt"]
    figs = render.figures(results, {})
    assert "gpu" not in figs
    assert set(render.write_plots(figs, tmp_path, {})) == {"ratio", "loaders"}


def test_data_summary_rows_name_every_peer_fastest_first() -> None:
    bench = Bench.__new__(Bench)  # only the summary rows: no temp dir, no workers
    bench.headlines = []
    runs = {"streaming": [1000.0, 1200.0], "webloader": [1000.0, 1000.0], "mapstyle": [3000.0, 3000.0],
            "mixture": [900.0, 1300.0]}
    table = {(v, 2): [{"rep": i, "samples_per_s": s, "gap_ms": 50.0} for i, s in enumerate(sps)]
             for v, sps in runs.items()}
    bench._headline_data(table, [2])
    first = bench.headlines[0]
    assert first["dltrain"] == "1,100/s (1.10x WebLoader)"
    assert first["peer"] == "map-style (in memory) 3,000/s; WebLoader 1,000/s"
    assert first["verdict"] == "PASS"
    gap = bench.headlines[1]
    assert (gap["dltrain"], gap["peer"], gap["verdict"]) == ("50 ms", "WebLoader 50 ms", "PASS")
    mixture = bench.headlines[-1]
    assert mixture["dltrain"] == "0.992x"  # paired: 900/1000 and 1300/1200, median of the two ratios


def test_a_verdict_measured_on_a_busy_machine_is_noisy() -> None:
    assert [render.judged(v, noisy=False) for v in ("PASS", "MISS", "n/a")] == ["PASS", "MISS", "n/a"]
    assert [render.judged(v, noisy=True) for v in ("PASS", "MISS", "n/a")] == ["noisy", "noisy", "n/a"]
    row = render.judged_row(render.headline("data", "3b. raw", "1.20x", "LitData", ">= 1.1x", "PASS"), noisy=True)
    assert (row["verdict"], row["measured"]) == ("noisy", "PASS")
    assert render.summary_table([row])[2].endswith("| noisy (measured PASS) |")


def _document(loads: list[float]) -> dict:
    """Bench.document() of a run with one summary row and one target, the given loads sampled during it."""
    import argparse

    bench = Bench.__new__(Bench)  # no temp dir, no workers
    bench.args = argparse.Namespace(quick=False, device="cpu", include=[], include_note=[])
    bench.cfg, bench.elapsed, bench.loads, bench.notes, bench.sections, bench.results = {}, 60.0, loads, [], [], {}
    bench.headlines = [render.headline("data", "3b. raw", "1.20x", "LitData", ">= 1.1x", "PASS")]
    bench.verdicts = [("3b. raw", "1.200", ">= 1.1", "PASS"), ("3b. jpeg", "0.900", ">= 0.95", "MISS")]
    meta = {"cpu": "c", "cores": "2", "load": "0.4 0.3 0.2", "gpu": "none", "python": "3", "torch": "t",
            "lightning": "l", "webdataset": "w", "dltrain": "x", "git": "g"}
    return bench.document(meta)


def test_the_summary_shows_the_load_and_marks_verdicts_noisy_above_the_quiet_limit(tmp_path: Path) -> None:
    quiet = _document([0.4, 1.2, 1.5])  # 1.5 is still quiet: "exceeded 1.5" is the limit
    assert [v[3] for v in quiet["verdicts"]] == ["PASS", "MISS"] and quiet["headlines"][0]["verdict"] == "PASS"
    text = render.report(quiet, {}, tmp_path / "r.md")
    assert "load average at start 0.4 0.3 0.2, at end " in text and "highest sampled 1.5" in text
    assert "1 of 2 targets met" in text

    busy = _document([0.4, 7.9, 1.0])  # busy in the middle of the run only
    assert [v[3] for v in busy["verdicts"]] == ["noisy", "noisy"]
    assert busy["headlines"][0]["verdict"] == "noisy" and busy["headlines"][0]["measured"] == "PASS"
    text = render.report(busy, {}, tmp_path / "r.md")
    assert "highest sampled 7.9" in text and '2 of 2 verdicts are "noisy" instead of PASS/MISS' in text
    assert "Targets missed in this run" not in text  # a noisy MISS is not claimed as a miss


def test_the_regimes_section_pairs_dltrain_with_litdata_round_by_round() -> None:
    bench = Bench.__new__(Bench)  # the report of case 3b only: no temp dir, no workers
    bench.headlines, bench.verdicts, bench.notes, bench.sections = [], [], [], []
    bench.cfg = {"data": {"samples": 100, "batch": 10, "epochs": 2, "repeats": 2, "workers": [0],
                          "regimes": {"raw": {"samples": 200, "shards": 2, "bytes": 2048},
                                      "jpeg": {"samples": 40, "shards": 2, "size": 256}}}}
    once = [{"exactly_once": True, "duplicates": 0, "missing": 0, "unknown": 0}] * 2

    def runs(sps: list[float], first: float) -> list[dict]:
        return [{"rep": i, "samples_per_s": s, "first_batch_s": first, "epochs_checked": once} for i, s in enumerate(sps)]

    bench.results = {"data": {"streaming/0": runs([120.0, 100.0], 0.1), "litdata/0": runs([100.0, 100.0], 0.2)}}
    bench._report_regimes({("raw", "streaming", 0): runs([1300.0, 1100.0], 0.1),
                           ("raw", "litdata", 0): runs([1000.0, 1000.0], 0.2),
                           ("jpeg", "streaming", 0): runs([9.0, 10.0], 0.5),
                           ("jpeg", "litdata", 0): runs([10.0, 10.0], 0.4)})
    rows = {r["figure"]: r for r in bench.headlines}
    raw = rows["3b. dltrain / LitData samples/s (paired), raw, 0 workers"]
    assert raw["dltrain"].startswith("1.20x") and raw["verdict"] == "PASS"  # paired 1.3 and 1.1: median 1.2
    png = rows["3b. dltrain / LitData samples/s (paired), png, 0 workers"]
    assert png["dltrain"].startswith("1.10x") and png["verdict"] == "PASS"  # 1.2 and 1.0
    jpeg = rows["3b. dltrain / LitData samples/s (paired), jpeg, 0 workers"]
    assert jpeg["dltrain"].startswith("0.95x") and jpeg["limit"].startswith(">= 0.95x (parity")  # 0.9 and 1.0
    firsts = {f: s for f, _, _, s in bench.verdicts if "first batch" in f}
    assert firsts == {"3b. first batch, raw, 0 workers: dltrain / LitData": "PASS",
                      "3b. first batch, png, 0 workers: dltrain / LitData": "PASS",
                      "3b. first batch, jpeg, 0 workers: dltrain / LitData": "MISS"}
    section = bench.sections[0]
    assert "| raw | 0 | 1,200 | 1,000 | 1.200 (1.100-1.300) | 0.100 / 0.200 | 0 / 0; 0 / 0 |" in section
    assert not bench.notes
