"""The parent side of ``scripts/bench``: worker processes, interleaved rounds, the cases, the command line."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import render
from benchlib.config import BASELINE, CPU_CASES, CUDA_CASES, FULL, QUICK, ROOT, SCRIPTS, TARGETS
from benchlib.datacase import prepare
from benchlib.render import (
    LOOP_LEGEND,
    _fmt_dict,
    _loop_table,
    _med,
    _paired,
    _ratio_of_ratios,
    _spread,
    _verdict,
)
from benchlib.runners import ddp_main
from benchlib.worker import serve


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _child_env(src: str | None = None) -> dict[str, str]:
    """A worker's environment; ``src``: a folder whose ``dltrain`` package it imports instead of the installed one
    (another commit's code, ``--baseline``)."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONPATH"] = os.pathsep.join([*filter(None, [src]), str(SCRIPTS), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


class Worker:
    """A worker process serving runs of one variant (or a family of them)."""

    def __init__(self, name: str, logdir: str, src: str | None = None) -> None:
        self.name = name
        self.log_path = os.path.join(logdir, f"worker-{name}.log")
        self.log = open(self.log_path, "w")  # noqa: SIM115
        self.t_launch = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchlib.core", "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=_child_env(src), text=True,
            cwd=str(ROOT),
        )
        self.ready: dict[str, Any] | None = None

    def wait_ready(self) -> dict[str, Any]:
        if self.ready is None:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError(f"worker {self.name} died at start; see {self.log_path}:\n{self._tail()}")
            self.ready = json.loads(line)
            self.ready["launch_to_ready_s"] = time.time() - self.t_launch
        return self.ready

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return Path(self.log_path).read_text()[-3000:]
        return ""

    def call(self, **cmd: Any) -> dict[str, Any]:
        self.wait_ready()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died; see {self.log_path}:\n{self._tail()}")
        return json.loads(line)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.flush()
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _rotated(names: list[str], rep: int) -> list[str]:
    k = rep % len(names)
    return names[k:] + names[:k]


MONITOR_VARIANTS = ["dltrain_tm", "dltrain_mfu"]  # runners.LoopRunner's ThroughputMonitor variants
BEFORE_VARIANTS = ["hand", "dltrain"]  # what the --baseline commit's worker runs in case 1
_PEER_NAMES = {"fabric": "Fabric", "lightning": "Lightning", "webloader": "WebLoader", "mapstyle": "map-style (in memory)",
               "hand": "hand loop", "litdata": "LitData", "mosaic": "mosaic streaming"}
# The exactly-once peer loaders of cases 3 and 5 (benchlib.peers; pyproject's `bench` extra).
PEER_LOADERS = ["litdata", "mosaic"]


def _exactly_once(runs: list[dict[str, Any]]) -> str:
    """Over every checked epoch of these runs: the worst epoch's duplicated and missing (or unknown) keys."""
    checks = [e for r in runs for e in r.get("epochs_checked", [])]
    if not checks:
        return "-"
    return f"{max(e['duplicates'] for e in checks)} / {max(e['missing'] + e['unknown'] for e in checks)}"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg = QUICK if args.quick else FULL
        self.tmp = tempfile.mkdtemp(prefix="dltrain-bench-")
        self.logdir = os.path.join(self.tmp, "logs")
        os.makedirs(self.logdir)
        self.results: dict[str, Any] = {}
        self.sections: list[str] = []
        self.verdicts: list[tuple[str, str, str, str]] = []  # (figure, value, target, PASS/MISS)
        self.notes: list[str] = []
        self.headlines: list[dict[str, str]] = []  # the summary table's rows (render.headline)
        self.loads: list[float] = []  # 1-minute load averages sampled during the run (start, between cases, end)

    def _headline(self, family: str, figure: str, dltrain: str, peer: str, limit: str, verdict: str) -> None:
        self.headlines.append(render.headline(family, figure, dltrain, peer, limit, verdict))

    # ------------------------------------------------------------------ helpers
    def _interleave(self, workers: dict[str, Worker], case: str, repeats: int, cfg: dict[str, Any],
                    variants: list[str], extra: dict[str, Any] | None = None,
                    args_of: Any = None, warmup: bool = True) -> dict[str, list[dict[str, Any]]]:
        """Run `repeats` rounds of every variant, order rotated each round; a first un-counted warm-up round."""
        out: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        rounds = range(-1 if warmup else 0, repeats)
        for rep in rounds:
            for v in (variants if rep < 0 else _rotated(variants, rep)):
                w = workers[v]
                # "*": the worker serves every variant; "dltrain@<rev>" is its "dltrain" (another commit's code).
                variant = v.partition("@")[0] if getattr(w, "variant", v) == "*" else w.variant  # type: ignore[attr-defined]
                args = dict(args_of(v) if args_of else {})
                if rep < 0:
                    args["warmup"] = True
                cmd = {"case": case, "variant": variant, "cfg": cfg, "tmp": self.tmp, "rep": max(rep, 0),
                       "args": args, **(extra or {})}
                res = w.call(**cmd)
                if "error" in res:
                    _log(f"{case}/{v} rep {rep}: ERROR {res['error']}\n{res.get('traceback', '')}")
                res["rep"] = rep
                if rep < 0:
                    out.setdefault(f"{v}:warmup", []).append(res)  # type: ignore[arg-type]
                else:
                    out[v].append(res)
            if rep >= 0:
                _log(f"{case}: round {rep + 1}/{repeats} done")
        return out

    def _spawn(self, names: list[str], variant_of: Any = None) -> dict[str, Worker]:
        workers = {}
        for n in names:
            w = Worker(n, self.logdir)
            w.variant = variant_of(n) if variant_of else n  # type: ignore[attr-defined]
            workers[n] = w
        for w in workers.values():
            w.wait_ready()
        return workers

    # ------------------------------------------------------------------ cases 1 and 2
    def case_loops(self, cases: list[str]) -> None:
        """Cases 1-2. Timing: every variant in ONE shared worker process (same heap, same imports, interleaved), so
        no variant profits from a luckier process (we measured up to 10 % between processes running the same loop).
        Memory and cold start: each variant alone in its own fresh process, launched one at a time (skipped with
        --quick)."""
        variants = ["hand", "dltrain", "fabric", "lightning"]
        # Case 1 also times dltrain with ThroughputMonitor, without and with MFU (issue 17 added MFU to it):
        # the before/after of the monitor's per-step cost, side by side in the same rounds.
        variants_of = {c: variants + (MONITOR_VARIANTS if c == "loop" else []) for c in cases}
        reps = self.cfg["repeats"]
        cold: dict[str, dict[str, float]] = {}
        rss: dict[str, dict[str, float]] = {c: {} for c in cases}
        if not self.args.quick:
            for v in variants:
                w = Worker(f"{v}-alone", self.logdir)
                try:
                    ready = w.wait_ready()
                    for case in cases:
                        res = w.call(case=case, variant=v, cfg=self.cfg[case], tmp=self.tmp, rep=0, args={})
                        if "error" in res:
                            _log(f"{case}/{v} alone: ERROR {res['error']}\n{res.get('traceback', '')}")
                            continue
                        rss[case][v] = res["rss_mb"]
                        if case == cases[0]:
                            cold[v] = {"launch_to_ready_s": ready["launch_to_ready_s"],
                                       "total_s": res["ended_at"] - w.t_launch}
                finally:
                    w.close()
                _log(f"loops: {v} alone: cold start and memory done")
        shared = Worker("shared", self.logdir)
        shared.variant = "*"  # type: ignore[attr-defined]
        # Before/after from one run: the --baseline commit's dltrain (and a hand loop, its pair) in a worker of its
        # own, in the same interleaved rounds as case 1.
        before = self._baseline_worker() if "loop" in cases else None
        try:
            shared.wait_ready()
            workers_of = {c: dict.fromkeys(variants_of[c], shared) for c in cases}
            if before is not None:
                rev = before.rev  # type: ignore[attr-defined]
                workers_of["loop"].update({f"{v}@{rev}": before for v in BEFORE_VARIANTS})
            for case in cases:
                for v, w in workers_of[case].items():  # warm-up: imports and first-use costs, not counted
                    res = w.call(case=case, variant=v.partition("@")[0], cfg=self.cfg[case], tmp=self.tmp, rep=0,
                                 args={})
                    if "error" in res:
                        _log(f"{case}/{v} warm-up: ERROR {res['error']}\n{res.get('traceback', '')}")
            for case in cases:
                res = self._interleave(workers_of[case], case, reps, self.cfg[case], list(workers_of[case]),
                                       warmup=False)
                self.results[case] = res
                self._report_loop(case, res, cold if case == cases[0] and cold else None, rss[case])
        finally:
            shared.close()
            if before is not None:
                before.close()

    def _baseline_worker(self) -> Worker | None:
        """A worker importing the dltrain of commit ``--baseline`` (``git archive`` of its ``src/``), or None."""
        rev = self.args.baseline
        if not rev or rev == "none":
            return None
        folder = Path(self.tmp) / "baseline"
        folder.mkdir()
        try:
            sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", f"{rev}^{{commit}}"], check=True,
                                 capture_output=True, text=True).stdout.strip()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "src"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
        except (OSError, subprocess.CalledProcessError) as err:
            self._note(f"case 1 before/after: could not export --baseline {rev} ({err}); measured after only")
            return None
        worker = Worker(f"baseline-{sha}", self.logdir, src=str(folder / "src"))
        worker.variant = "*"  # type: ignore[attr-defined]
        worker.rev = sha  # type: ignore[attr-defined]
        worker.wait_ready()
        return worker

    def _report_loop(self, case: str, res: dict[str, list[dict[str, Any]]], cold: dict[str, Any] | None,
                     rss: dict[str, float]) -> None:
        target = TARGETS[case]
        steps = self.cfg[case]["steps"]
        title = {"loop": "1. Loop overhead: tiny MLP, CPU, 1 thread",
                 "cnn": "2. Compute-bound: MNIST CNN (pytorch/examples shape), CPU, 1 thread"}[case]
        c = self.cfg[case]
        n_ok = len([r for r in res.get("hand", []) if "error" not in r])
        desc = (f"{steps} steps of batch {c['batch']} from an in-memory TensorDataset DataLoader (shuffle=True), "
                f"one epoch per run; {n_ok} interleaved rounds; medians over rounds.")
        variants = [v for v in res if ":" not in v]
        lines = [f"### {title}", "", desc, "", *_loop_table(res, variants, steps, rss)]
        lines += self._report_before_after(res)
        r = _paired(res, "dltrain", "c_step_med")
        if r:
            self.verdicts.append((f"{title.split(':')[0]}: dltrain / hand, median step (CPU)", f"{_med(r):.3f}",
                                  f"<= {target}", _verdict(_med(r) <= target)))
            peers = {v: _med(_paired(res, v, "c_step_med")) for v in ("fabric", "lightning")
                     if _paired(res, v, "c_step_med")}
            best = min(peers, key=lambda v: peers[v]) if peers else None
            self._headline(case, f"{title.split(':')[0]}: step time / hand loop (CPU, median step)",
                           f"{_med(r):.3f}x", f"{_PEER_NAMES[best]} {peers[best]:.3f}x" if best else "-",
                           f"<= {target}x", _verdict(_med(r) <= target))
        f = _paired(res, "dltrain", "c_fit")
        if f:
            self.verdicts.append((f"{title.split(':')[0]}: dltrain / hand, whole fit (CPU)", f"{_med(f):.3f}",
                                  f"<= {target}", _verdict(_med(f) <= target)))
        self._collect_notes(case, res)
        lines += ["", LOOP_LEGEND, ""]
        lines += self._report_monitor(res)
        if cold:
            lines += ["Cold start (one sample each, workers launched one at a time): " + "; ".join(
                f"{v} {d['launch_to_ready_s']:.1f} s to import torch, {d['total_s']:.1f} s from launch to the end "
                "of the first fit" for v, d in cold.items()) + ".", ""]
        self.sections.append("\n".join(lines))

    def _report_before_after(self, res: dict[str, list[dict[str, Any]]]) -> list[str]:
        """Case 1 before/after: the --baseline commit's dltrain and the current one, each paired with the hand loop
        of its own worker, in the same rounds; and per round, (after / hand) / (before / hand)."""
        before = next((v for v in res if v.startswith("dltrain@") and ":" not in v), None)
        if before is None:
            return []
        rev = before.partition("@")[2]
        lines = ["", f"**Before/after, one run** (the dltrain of commit `{rev}` (`--baseline`) in a worker of its own, "
                 "with its own hand loop, interleaved with the rounds above; each dltrain is paired with the hand "
                 "loop of its own worker; median over rounds, range in brackets):", ""]
        for key, what in (("c_step_med", "median step (CPU)"), ("c_fit", "whole fit (CPU)")):
            b, a = _paired(res, before, key), _paired(res, "dltrain", key)
            per_round = _ratio_of_ratios(res, before, key)
            if not (a and b and per_round):
                continue
            lines.append(f"- {what}: before {_med(b):.3f}x ({_spread(b)}), after {_med(a):.3f}x ({_spread(a)}) the "
                         f"hand loop; after / before per round {_med(per_round):.3f} ({_spread(per_round)})")
            if key == "c_step_med":
                self._headline("loop", f"1. Loop overhead before ({rev}) / after: step time / hand loop (CPU)",
                               f"{_med(b):.3f}x -> {_med(a):.3f}x", "-", f"<= {TARGETS['loop']}x",
                               _verdict(_med(a) <= TARGETS["loop"]))
        return [*lines, ""]

    def _report_monitor(self, res: dict[str, list[dict[str, Any]]]) -> list[str]:
        """Case 1's ThroughputMonitor variants against plain dltrain of the same rounds (no target: a measurement)."""
        if not all(res.get(v) for v in MONITOR_VARIANTS):
            return []
        tm = _paired(res, "dltrain_tm", "c_step_med", base="dltrain")
        mfu = _paired(res, "dltrain_mfu", "c_step_med", base="dltrain")
        mfu_tm = _paired(res, "dltrain_mfu", "c_step_med", base="dltrain_tm")
        if not (tm and mfu and mfu_tm):
            return []
        step = 1e6 * _med([r["c_step_med"] for r in res["dltrain"] if "error" not in r])
        self._headline("loop", "1. dltrain step time, ThroughputMonitor with MFU on / off (CPU, median step)",
                       f"{_med(mfu):.3f}x", "-", "no target (measured)", "info")
        return [f"ThroughputMonitor's cost per step (paired with plain dltrain in the same rounds, median step, CPU; "
                f"plain dltrain's median step {step:,.0f} µs): dltrain_tm = `ThroughputMonitor()` (samples/s and "
                f"data wait; the task does not say its FLOPs) {_med(tm):.3f}x ({_spread(tm)}); dltrain_mfu = "
                "`ThroughputMonitor(measure_flops=True, peak_flops=...)` (FLOPs counted on the first batch, MFU "
                f"logged; the CPU peak passed is nominal) {_med(mfu):.3f}x ({_spread(mfu)}); MFU on / MFU off "
                f"(dltrain_mfu / dltrain_tm) {_med(mfu_tm):.3f}x ({_spread(mfu_tm)}). The monitor is not among "
                "dltrain's default callbacks: the dltrain row above runs without it.", ""]

    def _collect_notes(self, case: str, res: dict[str, list[dict[str, Any]]]) -> None:
        for v, rs in res.items():
            for r in rs:
                for n in r.get("notes") or []:
                    self._note(f"{case}/{v}: {n}")
            errs = [r for r in rs if "error" in r]
            if errs:
                self._note(f"{case}/{v}: {len(errs)} run(s) failed: {errs[0]['error']}")

    # ------------------------------------------------------------------ case 3
    def case_data(self, urls: list[str], diag: dict[str, Any] | None = None) -> None:
        c = self.cfg["data"]
        variants = ["streaming", "streaming-pipe", "pipe-no-read-ahead", "mixture", "webloader", "mapstyle",
                    *PEER_LOADERS]
        workers = self._spawn(variants)
        table: dict[tuple[str, int], list[dict[str, Any]]] = {}
        try:
            for nw in c["workers"]:
                res = self._interleave(workers, "data", c["repeats"], c, variants, extra={"urls": urls},
                                       args_of=lambda v, nw=nw: {"workers": nw})
                for v in variants:
                    table[(v, nw)] = res[v]
        finally:
            for w in workers.values():
                w.close()
        self.results["data"] = {f"{v}/{nw}": rs for (v, nw), rs in table.items()}
        lines = ["### 3. Data: StreamingDataset (and a Mixture of its shards) vs webdataset.WebLoader vs map-style "
                 "DataLoader", "", "mixture: the same shards as 3 sources (every third shard) weighted by size, "
                 "so the same samples per epoch through `dltrain.data.Mixture`; streaming-pipe: the same shards as "
                 "`pipe:cat` URLs (read forward, as remote or compressed shards are), pipe-no-read-ahead: the same with "
                 "`read_ahead=False`. Every pipeline pauses "
                 f"{c.get('pause_s', 0)} s between epochs (untimed; a training epoch's end: validation, a checkpoint); "
                 "the gap is from `iter()` to the first batch of the last epoch. litdata, mosaic: the same samples "
                 "converted (untimed, once per worker) with `litdata.optimize` into LitData chunks and with "
                 "`streaming.MDSWriter` into mosaic MDS shards, about one chunk/shard per tar shard, read with each "
                 "library's `StreamingDataset` (shuffle=True) + `StreamingDataLoader`, the same decode in the "
                 "dataset and torch's default_collate (benchlib/peers.py).", "",
                 f"{c['samples']:,} PNG 32x32 RGB images + cls in {c['shards']} shards written with "
                 f"`dltrain.data.write_shards`; PIL decode to a float tensor (same function everywhere), batch "
                 f"{c['batch']}, shuffle buffer 1000, {c['epochs']} epochs per run with persistent workers; the "
                 "main process only iterates. samples/s is the last epoch (including the gap before it). "
                 f"{c['repeats']} interleaved repeats, medians.", "",
                 "Every batch carries its samples' keys; \"per epoch\" counts, over all measured epochs of all "
                 "runs, the worst epoch's duplicated and missing keys (0 / 0: every sample exactly once; dltrain's "
                 "datasets are built with training=False, so that they deliver every sample as the peers do).", "",
                 "| pipeline | workers | samples/s | ratio to WebLoader (paired median) | first batch (s) | "
                 "gap between epochs (ms) | per epoch: duplicates / missing |", "|---|---|---|---|---|---|---|"]
        for nw in c["workers"]:
            web = {r["rep"]: r for r in table[("webloader", nw)] if "error" not in r}
            for v in variants:
                rs = [r for r in table[(v, nw)] if "error" not in r]
                if not rs:
                    err = table[(v, nw)][0].get("error") if table[(v, nw)] else "no runs"
                    lines.append(f"| {v} | {nw} | failed: {err} |||||")
                    continue
                ratios = [r["samples_per_s"] / web[r["rep"]]["samples_per_s"] for r in rs if r["rep"] in web]
                sps = _med([r["samples_per_s"] for r in rs])
                first = _med([r["first_batch_s"] for r in rs])
                gap = _med([r["gap_ms"] for r in rs])
                checks = [e for r in rs for e in r.get("epochs_checked", [])]
                once = (f"{max(e['duplicates'] for e in checks)} / {max(e['missing'] + e['unknown'] for e in checks)}"
                        if checks else "-")
                lines.append(f"| {v} | {nw} | {sps:,.0f} | {_med(ratios):.3f} ({_spread(ratios)}) | {first:.3f} | "
                             f"{gap:.0f} | {once} |")
                if v == "streaming-pipe":
                    self.verdicts.append((f"3. StreamingDataset on pipe: shards, gap between epochs, {nw} workers",
                                          f"{gap:.0f} ms", f"<= {TARGETS['data_gap_ms']:.0f} ms",
                                          _verdict(gap <= TARGETS["data_gap_ms"])))
                if v == "mixture":
                    own = {r["rep"]: r for r in table[("streaming", nw)] if "error" not in r}
                    mr = [r["samples_per_s"] / own[r["rep"]]["samples_per_s"] for r in rs if r["rep"] in own]
                    self.verdicts.append((f"3. Mixture of 3 sources / one StreamingDataset samples/s, {nw} workers",
                                          f"{_med(mr):.3f}", f">= {TARGETS['mixture_ratio']}",
                                          _verdict(_med(mr) >= TARGETS["mixture_ratio"])))
                if v == "streaming":
                    r = _med(ratios)
                    self.verdicts.append((f"3. StreamingDataset / WebLoader samples/s, {nw} workers", f"{r:.3f}",
                                          f">= {TARGETS['data_ratio']}", _verdict(r >= TARGETS["data_ratio"])))
                    self.verdicts.append((f"3. StreamingDataset gap between epochs, {nw} workers", f"{gap:.0f} ms",
                                          f"<= {TARGETS['data_gap_ms']:.0f} ms",
                                          _verdict(gap <= TARGETS["data_gap_ms"])))
                    self.verdicts.append((f"3. StreamingDataset first batch, {nw} workers", f"{first:.3f} s",
                                          f"<= {TARGETS['data_first_s']:.0f} s",
                                          _verdict(first <= TARGETS["data_first_s"])))
                bad = [r for r in rs if r["samples"][-1] < c["samples"] - c["batch"] * max(nw, 1)]
                if bad:
                    self._note(f"data/{v}/{nw}w: an epoch yielded only {bad[0]['samples']} samples")
            for v in variants:
                errs = [r for r in table[(v, nw)] if "error" in r]
                if errs:
                    self._note(f"data/{v}/{nw} workers: {len(errs)} run(s) failed: {errs[0]['error']}")
        self._headline_data(table, c["workers"])
        if diag:
            self.results["tar_diag"] = diag
            lines += ["", f"Shard format (first shard, measured when the shards were written): {diag['pax_members']} of "
                      f"{diag['members']} tar members carry a PAX extended header"
                      f"{' (a float mtime)' if diag['pax_members'] else ''}; {diag['bytes'] / 2**20:.1f} MiB, {diag['parse_us']:.0f} µs per member to parse "
                      f"(best of 3). The same samples with an integer mtime: {diag['bytes_int_mtime'] / 2**20:.1f} MiB, "
                      f"{diag['parse_us_int_mtime']:.0f} µs per member."]
        lines.append("")
        self.sections.append("\n".join(lines))

    def case_data_regimes(self, shards: dict[str, Any]) -> None:
        """Case 3's regimes (issue 27): dltrain's StreamingDataset against LitData's, paired, on raw 2 KiB payloads
        with no decode (the reader is the bottleneck) and on 256 px JPEGs (the decode is), plus the PNG rows of
        `case_data`."""
        c = self.cfg["data"]
        regimes = [r for r in c.get("regimes", {}) if f"data-{r}" in shards]
        if not regimes:
            return
        variants = ["streaming", "litdata"]
        workers = self._spawn(variants)
        table: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        try:
            for regime in regimes:
                rc = {**c, **c["regimes"][regime], "regime": regime}
                rc.pop("regimes")
                for nw in c["workers"]:
                    self._sample_load()
                    res = self._interleave(workers, f"data-{regime}", c["repeats"], rc, variants,
                                           extra={"urls": shards[f"data-{regime}"]},
                                           args_of=lambda v, nw=nw: {"workers": nw})
                    for v in variants:
                        table[(regime, v, nw)] = res[v]
        finally:
            for w in workers.values():
                w.close()
        self.results["data_regimes"] = {f"{g}/{v}/{nw}": rs for (g, v, nw), rs in table.items()}
        self._report_regimes(table)

    def _report_regimes(self, table: dict[tuple[str, str, int], list[dict[str, Any]]]) -> None:
        """Case 3b's section, summary rows and verdicts from its runs (``(regime, variant, workers) -> runs``) and
        case 3's PNG runs of the same two loaders."""
        c = self.cfg["data"]
        variants = ["streaming", "litdata"]
        png = self.results.get("data", {})
        for nw in c["workers"]:  # the PNG regime is case 3's main table: its streaming and litdata runs
            for v in variants:
                if f"{v}/{nw}" in png:
                    table[("png", v, nw)] = png[f"{v}/{nw}"]
        about = {"raw": f"{c['regimes'].get('raw', {}).get('bytes', 0):,} random bytes + cls per sample, no decode "
                        "(the reader is the bottleneck)",
                 "png": "case 3's 32x32 PNGs, PIL decode",
                 "jpeg": f"{c['regimes'].get('jpeg', {}).get('size', 0)} px JPEGs (quality 90, smooth random images "
                         "with grain), PIL decode to a float tensor (the decode is the bottleneck)"}
        lines = ["### 3b. dltrain vs LitData in three regimes", "",
                 "The same samples written once with `dltrain.data.write_shards` and converted (untimed, once) with "
                 "`litdata.optimize`; shuffled epochs, batch "
                 f"{c['batch']}, {c['epochs']} epochs per run with persistent workers, samples/s of the last epoch; "
                 "each batch carries its keys and every epoch of every run is checked for every sample exactly "
                 f"once. {c['repeats']} interleaved rounds; ratios paired by round (median, range).", ""]
        lines += [f"- {g}: " + about[g] + (f", {c['regimes'][g]['samples']:,} samples in {c['regimes'][g]['shards']} "
                                             "shards" if g in c.get("regimes", {}) else f", {c['samples']:,} samples")
                  for g in ("raw", "png", "jpeg") if any(k[0] == g for k in table)]
        lines += ["", "| regime | workers | dltrain samples/s | LitData samples/s | dltrain / LitData (paired) | "
                  "first batch dltrain / LitData (s) | per epoch: duplicates / missing (dltrain; LitData) |",
                  "|---|---|---|---|---|---|---|"]
        for g in ("raw", "png", "jpeg"):
            for nw in c["workers"]:
                own = [r for r in table.get((g, "streaming", nw), []) if "error" not in r]
                lit = [r for r in table.get((g, "litdata", nw), []) if "error" not in r]
                if not own or not lit:
                    err = next((r.get("error") for v in variants for r in table.get((g, v, nw), []) if "error" in r),
                               None)
                    if err or (g, "streaming", nw) in table:
                        lines.append(f"| {g} | {nw} | failed: {err or 'no runs'} ||||||")
                        self._note(f"data-{g}/{nw} workers: {err or 'no runs'}")
                    continue
                by = {r["rep"]: r for r in lit}
                ratios = [r["samples_per_s"] / by[r["rep"]]["samples_per_s"] for r in own if r["rep"] in by]
                once = "; ".join(_exactly_once(rs) for rs in (own, lit))
                lines.append(f"| {g} | {nw} | {_med([r['samples_per_s'] for r in own]):,.0f} | "
                             f"{_med([r['samples_per_s'] for r in lit]):,.0f} | {_med(ratios):.3f} ({_spread(ratios)}) "
                             f"| {_med([r['first_batch_s'] for r in own]):.3f} / "
                             f"{_med([r['first_batch_s'] for r in lit]):.3f} | {once} |")
                target = TARGETS["litdata_parity"] if g == "jpeg" else TARGETS["litdata_ratio"]
                ok = _med(ratios) >= target
                what = "parity within noise" if g == "jpeg" else "the fastest by 10 %"
                self.verdicts.append((f"3b. dltrain / LitData samples/s, {g}, {nw} workers", f"{_med(ratios):.3f}",
                                      f">= {target}", _verdict(ok)))
                self._headline("data", f"3b. dltrain / LitData samples/s (paired), {g}, {nw} workers",
                               f"{_med(ratios):.2f}x ({_med([r['samples_per_s'] for r in own]):,.0f}/s)",
                               f"LitData {_med([r['samples_per_s'] for r in lit]):,.0f}/s",
                               f">= {target}x ({what})", _verdict(ok))
                first, lit_first = _med([r["first_batch_s"] for r in own]), _med([r["first_batch_s"] for r in lit])
                self.verdicts.append((f"3b. first batch, {g}, {nw} workers: dltrain / LitData",
                                      f"{first:.3f} / {lit_first:.3f} s", "<= LitData", _verdict(first <= lit_first)))
                if not all(e["exactly_once"] for r in own + lit for e in r.get("epochs_checked", [])):
                    self._note(f"data-{g}/{nw} workers: an epoch did not deliver every sample exactly once: {once}")
        lines.append("")
        self.sections.append("\n".join(lines))

    def _sample_load(self) -> None:
        """Record the 1-minute load average now (between cases and worker counts): the verdicts' noise flag."""
        self.loads.append(os.getloadavg()[0])

    def _headline_data(self, table: dict[tuple[str, int], list[dict[str, Any]]], counts: list[int]) -> None:
        """Summary rows of case 3: StreamingDataset's samples/s per worker count against the fastest peer
        pipeline of the same rounds, the gap between epochs and the Mixture ratio at the most workers."""

        def ok(v: str, nw: int) -> list[dict[str, Any]]:
            return [r for r in table.get((v, nw), []) if "error" not in r]

        for nw in counts:
            own = ok("streaming", nw)
            web = {r["rep"]: r for r in ok("webloader", nw)}
            peers = {v: _med([r["samples_per_s"] for r in ok(v, w)]) for v, w in table
                     if w == nw and v not in render.DLTRAIN_LOADERS and ok(v, w)}
            if not own or not web or not peers:
                continue
            ratio = _med([r["samples_per_s"] / web[r["rep"]]["samples_per_s"] for r in own if r["rep"] in web])
            ranked = sorted(peers, key=lambda v: -peers[v])  # every peer pipeline, fastest first
            self._headline("data", f"3. StreamingDataset samples/s, {nw} workers",
                           f"{_med([r['samples_per_s'] for r in own]):,.0f}/s ({ratio:.2f}x WebLoader)",
                           "; ".join(f"{_PEER_NAMES.get(v, v)} {peers[v]:,.0f}/s" for v in ranked),
                           f">= {TARGETS['data_ratio']}x WebLoader", _verdict(ratio >= TARGETS["data_ratio"]))
        for nw in counts:
            # Issue 16's target: StreamingDataset the fastest of the exactly-once loaders, paired by round.
            own = {r["rep"]: r for r in ok("streaming", nw)}
            paired = {v: [own[r["rep"]]["samples_per_s"] / r["samples_per_s"] for r in ok(v, nw) if r["rep"] in own]
                      for v in PEER_LOADERS}
            paired = {v: _med(p) for v, p in paired.items() if p}
            if paired:
                worst = min(paired, key=lambda v: paired[v])
                self._headline("data", f"3. StreamingDataset / exactly-once peer samples/s (paired), {nw} workers",
                               f"{paired[worst]:.2f}x {_PEER_NAMES[worst]}",
                               "; ".join(f"{paired[v]:.2f}x {_PEER_NAMES[v]}" for v in paired),
                               ">= 1.0x (the fastest)", _verdict(paired[worst] >= 1.0))
        nw = max(counts)
        for v, label in (("streaming", "local"), ("streaming-pipe", "pipe:")):
            rs, web = ok(v, nw), ok("webloader", nw)
            if rs and web:
                gap = _med([r["gap_ms"] for r in rs])
                self._headline("data", f"3. StreamingDataset gap between epochs ({label} shards), {nw} workers",
                               f"{gap:.0f} ms", f"WebLoader {_med([r['gap_ms'] for r in web]):.0f} ms",
                               f"<= {TARGETS['data_gap_ms']:.0f} ms", _verdict(gap <= TARGETS["data_gap_ms"]))
        mix, own = ok("mixture", nw), {r["rep"]: r for r in ok("streaming", nw)}
        mr = [r["samples_per_s"] / own[r["rep"]]["samples_per_s"] for r in mix if r["rep"] in own]
        if mr:
            self._headline("data", f"3. Mixture of 3 sources / one StreamingDataset, samples/s, {nw} workers",
                           f"{_med(mr):.3f}x", "-", f">= {TARGETS['mixture_ratio']}x",
                           _verdict(_med(mr) >= TARGETS["mixture_ratio"]))

    # ------------------------------------------------------------------ case 4
    def case_ddp(self) -> None:
        c = self.cfg["ddp"]
        spec = {"cfg": c, "repeats": c["repeats"], "tmp": self.tmp}
        log_path = os.path.join(self.logdir, "ddp.log")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "benchlib.core", "--ddp", json.dumps(spec)]
        _log("ddp: " + " ".join(cmd[:6]) + " ...")
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, env=_child_env(), text=True,
                                  cwd=str(ROOT), timeout=900)
        rows = [json.loads(line[len("BENCH_RESULT "):]) for line in proc.stdout.splitlines()
                if line.startswith("BENCH_RESULT ")]
        lines = ["### 4. DDP: 2 processes, gloo, CPU (torchrun --standalone --nproc_per_node=2)", "",
                 f"MLP of case 1, {c['steps']} steps of batch {c['batch']} per rank; hand-written DDP loop "
                 "(DistributedDataParallel + DistributedSampler) vs dltrain (strategy='ddp', default callbacks), "
                 f"alternately in the same two processes, {c['repeats']} repeats after a warm-up; rank 0's times.", ""]
        if proc.returncode != 0 or not rows:
            tail = Path(log_path).read_text()[-1500:]
            lines.append(f"DDP run failed (exit {proc.returncode}); log tail:\n\n```\n{tail}\n```\n")
            self.verdicts.append(("4. DDP dltrain / hand time", "failed", f"<= {TARGETS['ddp']}", "MISS"))
            self._headline("ddp", "4. DDP, 2 processes: step time / hand DDP loop", "failed", "-",
                           f"<= {TARGETS['ddp']}x", "MISS")
            self.sections.append("\n".join(lines))
            return
        res: dict[str, list[dict[str, Any]]] = {"hand": [], "dltrain": []}
        for r in rows:
            if r["rep"] >= 0:
                res[r["variant"]].append(r)
        self.results["ddp"] = res
        lines += _loop_table(res, ["hand", "dltrain"], c["steps"])
        w = _paired(res, "dltrain", "t_fit")
        if w:
            self.verdicts.append(("4. DDP dltrain / hand, wall time of the fit", f"{_med(w):.3f}",
                                  f"<= {TARGETS['ddp']}", _verdict(_med(w) <= TARGETS["ddp"])))
        m = _paired(res, "dltrain", "t_step_med")
        if m:
            self.verdicts.append(("4. DDP dltrain / hand, median step (wall)", f"{_med(m):.3f}",
                                  f"<= {TARGETS['ddp']}", _verdict(_med(m) <= TARGETS["ddp"])))
            self._headline("ddp", "4. DDP, 2 processes: step time / hand DDP loop (wall, median step)",
                           f"{_med(m):.3f}x", "-", f"<= {TARGETS['ddp']}x", _verdict(_med(m) <= TARGETS["ddp"]))
        self._collect_notes("ddp", res)
        lines += ["", "Rank 0's figures. The DDP verdict uses wall time: waiting for the other rank is part of a "
                  "DDP step's cost and is not CPU time.", ""]
        self.sections.append("\n".join(lines))

    # ------------------------------------------------------------------ case 9
    def case_ft(self) -> None:
        """Case 9 (benchlib.fault_tolerance, issue 24): replica groups vs DDP, and the time lost per failure."""
        from benchlib import fault_tolerance

        c = self.cfg["ft"]
        title = "### 9. FaultTolerant: 2 replica groups x 1 process (torchft, gloo) vs DDP on 2 processes, CPU"
        out = os.path.join(self.tmp, "ft.json")
        log_path = os.path.join(self.logdir, "ft.log")
        cmd = [sys.executable, "-m", "benchlib.fault_tolerance", "--json", out,
               *[f"--{k.replace('_', '-')}={v}" for k, v in c.items()]]
        _log("ft: " + " ".join(cmd[1:4]) + " ...")
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env(), cwd=str(ROOT),
                                  timeout=1800)
        if proc.returncode != 0 or not os.path.exists(out):
            tail = Path(log_path).read_text()[-1500:]
            self.sections.append(f"{title}\n\nrun failed (exit {proc.returncode}); log tail:\n\n```\n{tail}\n```\n")
            self._headline("ft", "9. FaultTolerant 2x1: step time / DDP", "failed", "-", f"<= {TARGETS['ft']}x",
                           "MISS")
            return
        res = json.loads(Path(out).read_text())
        self.results["ft"] = res
        lines, ratio = fault_tolerance.report(res, TARGETS["ft"])
        self.verdicts.append(("9. FaultTolerant 2x1 / DDP, median step", f"{ratio:.3f}", f"<= {TARGETS['ft']}",
                              _verdict(ratio <= TARGETS["ft"])))
        self._headline("ft", "9. FaultTolerant, 2 groups x 1 process: step time / DDP (median step)",
                       f"{ratio:.3f}x", "-", f"<= {TARGETS['ft']}x", _verdict(ratio <= TARGETS["ft"]))
        self.sections.append("\n".join([title, "", *lines, ""]))

    # ------------------------------------------------------------------ case 5
    def case_resume(self, urls: list[str]) -> None:
        c = self.cfg["resume"]
        kinds = ["streaming", "mapstyle"]
        positions = ["0", "10", "90"]
        workers = self._spawn(kinds)
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        try:
            for k in kinds:
                # positions interleaved inside each worker (0, 10, 90, 10, 90, 0, ...); kinds alternate by round
                out[k] = {p: [] for p in positions}
            for rep in range(-1, c["repeats"]):
                for k in (kinds if rep < 0 else _rotated(kinds, rep)):
                    for p in (positions if rep < 0 else _rotated(positions, rep)):
                        res = workers[k].call(case="resume", variant=k, cfg=c, tmp=self.tmp, rep=max(rep, 0),
                                              urls=urls if k == "streaming" else [], args={"at": p})
                        if "error" in res:
                            _log(f"resume/{k}@{p}: {res['error']}\n{res.get('traceback', '')}")
                        if rep >= 0:
                            res["rep"] = rep
                            out[k][p].append(res)
                if rep >= 0:
                    _log(f"resume: round {rep + 1}/{c['repeats']} done")
        finally:
            for w in workers.values():
                w.close()
        self.results["resume"] = out
        lines = ["### 5. Resume: fit(ckpt_path=...) to the first trained batch", "",
                 f"Epoch of {c['samples']:,} tiny samples (8 float32 + cls), batch {c['batch']}, "
                 f"{c['workers']} loader workers; StreamingDataset over {c['shards']} shards vs map-style "
                 "DataLoader (TensorDataset, shuffle=True). Mid-epoch checkpoints written by "
                 "`trainer.save_checkpoint` at 10% and 90% of the epoch. Time from the `fit()` call to the first "
                 "`on_train_batch_start`; 0% = no checkpoint. "
                 f"{c['repeats']} interleaved repeats, medians.", "",
                 "| loader | 0% (s) | 10% (s) | 90% (s) | 90% / 10% (paired median, range) | resumed at the right step |",
                 "|---|---|---|---|---|---|"]
        resumed: dict[str, tuple[float, float]] = {}  # kind -> (90% / 10% ratio, seconds at 90%)
        for k in kinds:
            rs = out[k]
            good = {p: [r for r in rs[p] if "error" not in r or r["error"].startswith("resumed at")] for p in positions}
            if not all(good[p] for p in positions):
                err = next((r["error"] for p in positions for r in rs[p] if "error" in r), "no runs")
                lines.append(f"| {k} | failed: {err} |||||")
                self.verdicts.append((f"5. resume {k}: 90% / 10%", "failed", f"<= {TARGETS['resume_ratio']}",
                                      "MISS"))
                continue
            med = {p: _med([r["first_batch_s"] for r in good[p]]) for p in positions}
            by10 = {r["rep"]: r for r in good["10"]}
            ratios = [r["first_batch_s"] / by10[r["rep"]]["first_batch_s"] for r in good["90"] if r["rep"] in by10]
            right = all("error" not in r for p in positions for r in rs[p])
            lines.append(f"| {k} | {med['0']:.3f} | {med['10']:.3f} | {med['90']:.3f} | {_med(ratios):.2f} "
                         f"({_spread(ratios)}) | {'yes' if right else 'NO'} |")
            self.verdicts.append((f"5. resume {k}: first batch at 90% / at 10%", f"{_med(ratios):.2f}",
                                  f"<= {TARGETS['resume_ratio']}", _verdict(_med(ratios) <= TARGETS["resume_ratio"])))
            resumed[k] = (_med(ratios), med["90"])
            if not right:
                bad = next(r for p in positions for r in rs[p] if "error" in r)
                self._note(f"resume/{k}: {bad['error']}")
            for p in positions:
                for r in rs[p]:
                    for n in r.get("notes", []):
                        self._note(f"resume/{k}: {n}")
        if "streaming" in resumed:
            ratio, at90 = resumed["streaming"]
            peer = resumed.get("mapstyle")
            self._headline("resume", "5. Resume: time to first batch at 90% / at 10% of an epoch",
                           f"{ratio:.2f}x ({at90:.2f} s at 90%)",
                           f"map-style {peer[0]:.2f}x ({peer[1]:.2f} s)" if peer else "-",
                           f"<= {TARGETS['resume_ratio']}x", _verdict(ratio <= TARGETS["resume_ratio"]))
        lines.append("")
        self.sections.append("\n".join(lines))

    def case_resume_loaders(self, urls: list[str]) -> None:
        """Case 5, loader level: dltrain's, LitData's and mosaic's StreamingDataLoader rebuilt from their own state
        saved at 0/10/90% of an epoch of the data case's images (benchlib.peers.PeerResumeRunner)."""
        c = {**self.cfg["resume"], "batch": self.cfg["data"]["batch"]}
        kinds, positions = ["dltrain", *PEER_LOADERS], ["0", "10", "90"]
        procs = self._spawn(kinds)
        for k, w in procs.items():
            w.variant = k  # type: ignore[attr-defined]
        runs = [f"{k}@{p}" for k in kinds for p in positions]
        try:
            res = self._interleave({r: procs[r.split("@")[0]] for r in runs}, "resume-loader", c["repeats"], c, runs,
                                   extra={"urls": urls}, args_of=lambda r: {"at": r.split("@")[1]})
        finally:
            for w in procs.values():
                w.close()
        self.results["resume_loader"] = res
        n = self.cfg["data"]["samples"]
        lines = ["### 5b. Resume, loader level: each library's own loader state, the data case's images", "",
                 f"The {n:,} PNG images of case 3 (LitData and mosaic: converted as there), batch {c['batch']}, "
                 f"{c['workers']} workers, shuffle. A state is saved once per position with the loader's own "
                 "`state_dict()` after 10% / 90% of the epoch's batches; each run builds a new loader, calls "
                 "`load_state_dict(state)` and times construction + load to the first batch (0% = a fresh loader, "
                 "no state). dltrain: `StreamingDataset(..., training=False).loader()`; LitData and mosaic: their "
                 "`StreamingDataLoader` (mosaic resumes by sample count). When the states are taken, the rest of "
                 "each resumed epoch is read: the keys before the save plus those after the resume are checked "
                 f"for every sample exactly once. {c['repeats']} interleaved repeats, medians.", "",
                 "| loader | 0% (s) | 10% (s) | 90% (s) | 90% / 10% (paired median, range) | exactly once across the "
                 "resume (10%, 90%) |", "|---|---|---|---|---|---|"]
        at90: dict[str, float] = {}
        for k in kinds:
            good = {p: [r for r in res[f"{k}@{p}"] if "first_batch_s" in r] for p in positions}
            if not all(good.values()):
                err = next((r["error"] for p in positions for r in res[f"{k}@{p}"] if "error" in r), "no runs")
                lines.append(f"| {k} | failed: {err} |||||")
                continue
            med = {p: _med([r["first_batch_s"] for r in good[p]]) for p in positions}
            by10 = {r["rep"]: r for r in good["10"]}
            ratios = [r["first_batch_s"] / by10[r["rep"]]["first_batch_s"] for r in good["90"] if r["rep"] in by10]
            checks = [good[p][0]["check"] for p in ("10", "90")]
            once = ", ".join("yes" if ch["exactly_once"] else f"NO: {ch['duplicates']} dup, {ch['missing']} missing"
                             for ch in checks)
            lines.append(f"| {_PEER_NAMES.get(k, k)} | {med['0']:.3f} | {med['10']:.3f} | {med['90']:.3f} | "
                         f"{_med(ratios):.2f} ({_spread(ratios)}) | {once} |")
            at90[k] = med["90"]
            if not all(ch["exactly_once"] for ch in checks):
                self._note(f"resume-loader/{k}: not every sample exactly once across a resume: {checks}")
        if "dltrain" in at90 and len(at90) > 1:
            peers = {k: v for k, v in at90.items() if k != "dltrain"}
            best = min(peers, key=lambda k: peers[k])
            self._headline("resume", "5b. Resume a loader from its state at 90% of an epoch: time to first batch",
                           f"{at90['dltrain']:.3f} s", "; ".join(f"{_PEER_NAMES[k]} {v:.3f} s" for k, v in
                                                                 sorted(peers.items(), key=lambda kv: kv[1])),
                           "fastest of the exactly-once loaders",
                           _verdict(at90["dltrain"] <= peers[best]))
        lines.append("")
        self.sections.append("\n".join(lines))

    # ------------------------------------------------------------------ case 7
    def case_ledger(self, urls: list[str]) -> None:
        """Case 7 (benchlib.ledger): both variants in one shared worker, interleaved after a warm-up of each."""
        from benchlib import ledger

        c = self.cfg["ledger"]
        shared = Worker("ledger", self.logdir)
        shared.variant = "*"  # type: ignore[attr-defined]
        try:
            shared.wait_ready()
            variants = [*ledger.VARIANTS, ledger.PARTS]
            res = self._interleave(dict.fromkeys(variants, shared), "ledger", c["repeats"], c, variants,
                                   extra={"urls": urls})
        finally:
            shared.close()
        self.results["ledger"] = res
        lines, verdicts = ledger.report(res, c, lambda r, v, k: _paired(r, v, k, base="plain"), _med, _spread)
        self.verdicts += [(f, v, t, _verdict(ok)) for f, v, t, ok in verdicts]
        for f, v, t, ok in verdicts:
            if "median step" in f:
                self._headline("ledger", "7. SampleLedger: step time / without it (CPU, median step)", f"{v}x", "-",
                               f"{t}x", _verdict(ok))
        self._collect_notes("ledger", res)
        self.sections.append("\n".join(lines))

    # ------------------------------------------------------------------ case 8
    def case_storage(self) -> None:
        """Case 8 (benchlib.storage): checkpoints and shards on a local S3 server vs local disk, in its own process
        (it starts the server)."""
        from benchlib import storage

        c = self.cfg["storage"]
        out = Path(self.tmp) / "storage.json"
        cmd = [sys.executable, "-m", "benchlib.storage", "--params", str(c["params"]), "--saves", str(c["saves"]),
               "--every", str(c["every"]), "--samples", str(c["samples"]), "--repeats", str(c["repeats"]),
               "--json", str(out)]
        _log("storage: " + " ".join(cmd[2:]))
        with open(Path(self.logdir) / "storage.log", "w") as log:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env(), check=False)
        if done.returncode != 0 or not out.exists():
            self.verdicts.append(("8. object storage", "failed", "-", "MISS"))
            self.sections.append(f"### 8. Object storage\n\nfailed (exit {done.returncode}); see "
                                 f"{Path(self.logdir) / 'storage.log'}\n")
            return
        res = json.loads(out.read_text())
        self.results["storage"] = res
        lines, verdicts = storage.report(res)
        self.verdicts += [(f, v, t, _verdict(ok)) for f, v, t, ok in verdicts]
        for f, v, t, ok in verdicts:
            self._headline("storage", f, f"{v}x", "-", t, _verdict(ok))
        self.sections.append("\n".join(lines))

    # ------------------------------------------------------------------ case 6
    def case_plugins(self) -> None:
        domains = ["vision", "text", "audio"]
        workers = self._spawn(domains)
        lines = ["### 6. Plugin pipelines (scripts/benchlib/<domain>.py)", "",
                 f"Each module's `run(seconds={self.cfg['plugins']['seconds']})`, once, in its own worker process "
                 "(no comparison, no target).", "", "| plugin | result |", "|---|---|"]
        try:
            for d in domains:
                res = workers[d].call(case="plugins", variant=d, cfg=self.cfg["plugins"], tmp=self.tmp, rep=0)
                self.results.setdefault("plugins", {})[d] = res
                if "error" in res:
                    lines.append(f"| {d} | failed: {res['error']} |")
                elif "skipped" in res:
                    lines.append(f"| {d} | skipped: {res['skipped']} |")
                    if res.get("traceback"):
                        _log(f"plugins/{d}:\n{res['traceback']}")
                else:
                    lines.append(f"| {d} | {_fmt_dict(res['result'])} |")
        finally:
            for w in workers.values():
                w.close()
        lines.append("")
        self.sections.append("\n".join(lines))

    # ------------------------------------------------------------------ CUDA
    def case_cuda(self, cases: list[str]) -> None:
        variants = ["hand", "dltrain"]
        workers = self._spawn(variants)
        try:
            for case in cases:
                c = self.cfg[case]
                res = self._interleave(workers, case, self.cfg["repeats"], c, variants)
                self.results[case] = res
                if case == "resnet":
                    title = f"ResNet-18, bf16-mixed, synthetic {c['size']}px, batch {c['batch']}"
                else:
                    title = (f"GPT ({c['layers']} layers, d={c['d_model']}, ctx {c['context']}, vocab {c['vocab']}), "
                             f"bf16-mixed, batch {c['batch']}")
                lines = [f"### CUDA: {title}", "",
                         f"Pinned synthetic batches (4 distinct, cycled); hand loop with torch.autocast(bfloat16) vs "
                         "dltrain Trainer(precision='bf16-mixed', default callbacks). Each run does a fit of "
                         f"N={c['steps']} and one of 2N steps: per step = (t(2N) - t(N)) / N, fixed = t(N) - N x per "
                         f"step. Wall time with torch.cuda.synchronize() at both ends; {self.cfg['repeats']} "
                         "interleaved rounds after a warm-up, medians.", "",
                         "| loop | steps/s (2N fit) | time per step (ms) | per-step ratio vs hand | fit(N) ratio vs hand "
                         "| fixed per fit (ms) | peak GPU MB |", "|---|---|---|---|---|---|---|"]
                for v in variants:
                    rs = [r for r in res[v] if "error" not in r]
                    if not rs:
                        lines.append(f"| {v} | failed: {res[v][0].get('error') if res[v] else 'no runs'} ||||||")
                        continue
                    pr, fr = _paired(res, v, "t_step"), _paired(res, v, "t_fit")
                    sps = _med([2 * r["steps"] / r["t_fit_2n"] for r in rs])
                    lines.append(f"| {v} | {sps:,.1f} | {1e3 * _med([r['t_step'] for r in rs]):.2f} | "
                                 f"**{_med(pr):.3f}** ({_spread(pr)}) | {_med(fr):.3f} ({_spread(fr)}) | "
                                 f"{1e3 * _med([r['t_fixed'] for r in rs]):.0f} | "
                                 f"{max(r['peak_gpu_mb'] for r in rs):,.0f} |")
                    if v == "dltrain":
                        self.verdicts.append((f"CUDA {case}: dltrain / hand, time per step", f"{_med(pr):.3f}",
                                              f"<= {TARGETS['cuda']}", _verdict(_med(pr) <= TARGETS["cuda"])))
                        self._headline("cuda", f"CUDA {case}: step time / hand loop", f"{_med(pr):.3f}x",
                                       "hand loop 1x", f"<= {TARGETS['cuda']}x",
                                       _verdict(_med(pr) <= TARGETS["cuda"]))
                    for r in rs:
                        for n in r.get("notes", []):
                            self._note(f"{case}/{v}: {n}")
                lines.append("")
                self.sections.append("\n".join(lines))
        finally:
            for w in workers.values():
                w.close()

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # ------------------------------------------------------------------ driver
    def prepare(self, cases: list[str]) -> dict[str, Any]:
        spec: dict[str, Any] = {"tmp": self.tmp}
        if "data" in cases or "resume" in cases or "loaders" in cases:  # 5b resumes loaders over case 3's images
            spec["data"] = self.cfg["data"]
        if "resume" in cases or "ledger" in cases:  # the ledger case trains on the resume case's shards
            spec["resume"] = self.cfg["resume"]
        if len(spec) == 1:
            return {}
        import hashlib

        # Shards are cached between invocations, keyed by their spec and by the source of the modules that write
        # shards and their index (a change to write_shards rewrites them). --no-cache writes them into the run's
        # temp dir.
        key = hashlib.sha1(json.dumps({k: v for k, v in spec.items() if k != "tmp"}, sort_keys=True).encode())
        for module in ("writing.py", "index.py", "tar.py"):
            with contextlib.suppress(OSError):
                key.update((ROOT / "src" / "dltrain" / "data" / module).read_bytes())
        if not self.args.no_cache:
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dltrain-bench" / key.hexdigest()[:16]
            done = cache / "shards.json"
            if done.exists():
                out = json.loads(done.read_text())
                if all(Path(u).exists() for k in ("data", "resume") for u in out.get(k, [])):
                    _log(f"shards: reusing {cache}")
                    return out
            cache.mkdir(parents=True, exist_ok=True)
            spec["tmp"] = str(cache)
        _log("writing shards ...")
        proc = subprocess.run([sys.executable, "-m", "benchlib.core", "--prepare", json.dumps(spec)],
                              capture_output=True, env=_child_env(), text=True,
                              cwd=str(ROOT))
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"writing shards failed:\n{proc.stderr[-3000:]}")
        out = json.loads(line[len("BENCH_RESULT "):])
        _log(f"shards written in {out['prepare_s']:.1f}s")
        if not self.args.no_cache:
            (Path(spec["tmp"]) / "shards.json").write_text(json.dumps(out))
        return out

    def run(self) -> int:
        args = self.args
        t0 = time.time()
        cases = args.cases.split(",") if args.cases else (CUDA_CASES if args.device == "cuda" else CPU_CASES)
        _log(f"cases: {', '.join(cases)}; temp dir {self.tmp}")
        import threading

        info: dict[str, Any] = {}
        probe = threading.Thread(target=lambda: info.update(machine()), daemon=True)
        probe.start()  # imports torch/lightning in a subprocess while shards are written, before any timing
        self._sample_load()
        try:
            shards = self.prepare(cases)
            probe.join()
            self.machine_info = info
            loop_cases = [c for c in cases if c in ("loop", "cnn")]
            if loop_cases:
                self.case_loops(loop_cases)
            if "data" in cases:
                self._sample_load()
                self.case_data(shards["data"], shards.get("tar_diag"))
                self.case_data_regimes(shards)
            if "ddp" in cases:
                self.case_ddp()
            if "resume" in cases:
                self._sample_load()
                self.case_resume(shards["resume"])
            if "resume" in cases or "loaders" in cases:  # "loaders": case 5b alone (the loaders' resume)
                self._sample_load()
                self.case_resume_loaders(shards["data"])
            if "plugins" in cases:
                self.case_plugins()
            if "ledger" in cases:
                self.case_ledger(shards["resume"])
            if "storage" in cases:
                self.case_storage()
            if "ft" in cases:
                self._sample_load()
                self.case_ft()
            cuda_cases = [c for c in cases if c in CUDA_CASES]
            if cuda_cases:
                self.case_cuda(cuda_cases)
        finally:
            self._sample_load()
            self.elapsed = time.time() - t0
            if args.json:
                Path(args.json).write_text(json.dumps(self.results, indent=1, default=str))
            if not args.keep:
                shutil.rmtree(self.tmp, ignore_errors=True)
        doc = self.document(getattr(self, "machine_info", None) or machine())
        results_path = Path(args.out).with_suffix(".json")
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(doc, indent=1, default=str))
        write_report(doc, args.out, args.plots)
        m = doc["meta"]
        print(render.summary([tuple(v) for v in doc["verdicts"]], self.notes,
                             load=f"load average at start {m['load']}, at end {m['load_end']}, highest sampled "
                                  f"{m['load_max']:.1f} (verdicts are 'noisy' above {m['quiet_load']})"))
        _log(f"wrote {args.out} and {results_path} in {self.elapsed / 60:.1f} min")
        return 0

    def document(self, m: dict[str, str]) -> dict[str, Any]:
        """The run as data: what the report, the summary table and the plots are rendered from."""
        import shlex

        meta = {**m, "command": shlex.join(["scripts/bench", *sys.argv[1:]]),
                "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                "load_end": "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()), "elapsed_s": self.elapsed,
                "load_max": max(self.loads, default=os.getloadavg()[0]), "quiet_load": TARGETS["quiet_load"],
                "quick": self.args.quick, "device": self.args.device, "include": self.args.include,
                "include_note": self.args.include_note, "cfg": self.cfg}
        noisy = meta["load_max"] > TARGETS["quiet_load"]
        return {"meta": meta, "headlines": [render.judged_row(h, noisy) for h in self.headlines],
                "verdicts": [render.judged_verdict(list(v), noisy) for v in self.verdicts], "notes": self.notes, "sections": self.sections, "figures": render.figures(self.results, self.cfg),
                "results": self.results}


def plots_folder(out: str | Path) -> Path:
    """Where the plots of a report written to ``out`` go by default: ``<out without suffix>-plots/``."""
    out = Path(out)
    return out.with_name(out.stem + "-plots")


def write_report(doc: dict[str, Any], out: str | Path, plots: str | Path | None = None) -> str:
    """Write the plots of a results document and the markdown report that links them; the report's text."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    paths = render.write_plots(doc["figures"], plots or plots_folder(out), TARGETS)
    text = render.report(doc, paths, out)
    Path(out).write_text(text)
    return text


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    code = ("import json,platform,importlib\n"
            "out={'python':platform.python_version()}\n"
            "for m in ('torch','lightning','webdataset','dltrain'):\n"
            "    try: out[m]=importlib.import_module(m).__version__\n"
            "    except Exception as e: out[m]='missing'\n"
            "try:\n"
            "    import torch; out['gpu']=torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'\n"
            "except Exception: out['gpu']='?'\n"
            "print(json.dumps(out))")
    info = {"torch": "?", "lightning": "?", "webdataset": "?", "dltrain": "?", "python": platform.python_version(),
            "gpu": "?"}
    with contextlib.suppress(Exception):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_child_env())
        info.update(json.loads(out.stdout.strip().splitlines()[-1]))
    git = "?"
    with contextlib.suppress(Exception):
        git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True).stdout.strip()
        if dirty:
            git += " + uncommitted changes in src/"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "load": "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()), "git": git,
            **info}


def cuda_available() -> tuple[bool, str]:
    code = ("import torch,json;print(json.dumps([torch.cuda.is_available(), torch.cuda.device_count(), "
            "torch.version.cuda]))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_child_env(), timeout=300)
        ok, n, ver = json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as err:
        return False, f"could not query torch.cuda ({err})"
    if not ok:
        return False, f"torch.cuda.is_available() is False (torch built for CUDA {ver}, {n} devices visible)"
    return True, ""


_DEFAULT_OUT = os.path.join(tempfile.gettempdir(), "dltrain-bench", "report.md")
_DESCRIPTION = "The dltrain benchmark harness behind ``scripts/bench`` (issue 8)."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve()
        return 0
    if argv[:1] == ["--ddp"]:
        ddp_main(json.loads(argv[1]))
        return 0
    if argv[:1] == ["--prepare"]:
        prepare(json.loads(argv[1]))
        return 0
    p = argparse.ArgumentParser(prog="scripts/bench", description=_DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="short smoke run (small sizes, fewer repeats; < 2 min idle)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu: cases 1-6; cuda: ResNet-18 bf16-mixed and a small GPT, dltrain vs hand loop")
    p.add_argument("--out", default=_DEFAULT_OUT,
                   help=f"where to write the report (default {_DEFAULT_OUT}); the results file goes next to it "
                        "(<out>.json). BENCHMARKS.md is edited by hand from such a report, not overwritten")
    p.add_argument("--cases", default=None,
                   help=f"comma-separated subset: {','.join(CPU_CASES)} (cpu) or {','.join(CUDA_CASES)} (cuda); "
                        "'loaders' runs case 5b alone (the loaders resumed from their own state; 'resume' runs "
                        "5 and 5b): 'data,loaders' gives every loader figure of issue 27")
    p.add_argument("--repeats", type=int, default=None, help="override the number of interleaved repeats")
    p.add_argument("--baseline", default=BASELINE, metavar="REV",
                   help=f"case 1 before/after from one run: also time the dltrain of git commit REV (default "
                        f"{BASELINE}, the last commit before core v2; 'none' to skip), in a worker of its own, "
                        "interleaved with the current code's rounds")
    p.add_argument("--json", default=None, help="also write every raw run as JSON to this path")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs)")
    p.add_argument("--include", action="append", default=[], metavar="MD",
                   help="append another scripts/bench output (e.g. a --device cuda run on a GPU machine) as a "
                        "clearly separated section; its figures stay those of its own invocation")
    p.add_argument("--include-note", action="append", default=[], metavar="TEXT",
                   help="a note printed above the --include file with the same position")
    p.add_argument("--no-cache", action="store_true",
                   help="write the shards into the temp dir instead of reusing ~/.cache/dltrain-bench")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="folder for the PNG plots the report links (default: <out without .md>-plots/)")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="measure nothing: render --out and its plots from the results file of an earlier run "
                        "(every run writes one next to its report, <out>.json)")
    args = p.parse_args(argv)
    if args.render:
        write_report(json.loads(Path(args.render).read_text()), args.out, args.plots)
        _log(f"wrote {args.out} from {args.render}")
        return 0
    if args.device == "cuda":
        ok, why = cuda_available()
        if not ok:
            print(f"scripts/bench --device cuda: no usable CUDA device: {why}. Run on a machine with a GPU, "
                  "or use --device cpu.", file=sys.stderr)
            return 2
    bench = Bench(args)
    if args.repeats:
        bench.cfg = {**bench.cfg, "repeats": args.repeats}
        for key in ("data", "ddp", "resume"):
            bench.cfg[key] = {**bench.cfg[key], "repeats": args.repeats}
    return bench.run()


if __name__ == "__main__":
    sys.exit(main())
