"""Rendering of ``scripts/bench`` results: statistics over rounds, tables, the report text."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _spread(xs: list[float]) -> str:
    return f"{min(xs):.3f}-{max(xs):.3f}" if xs else "-"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


NOISY = "noisy"


def judged(verdict: str, noisy: bool) -> str:
    """The verdict a report shows: a PASS or MISS measured while the machine was busy (the load average above
    the quiet limit at some point of the run) is "noisy", whichever way it went; "n/a" stays."""
    return NOISY if noisy and verdict in ("PASS", "MISS") else verdict


def judged_row(row: dict[str, str], noisy: bool) -> dict[str, str]:
    """A summary row (`headline`) with its verdict `judged`; the measured verdict kept as ``measured``."""
    return {**row, "verdict": judged(row["verdict"], noisy), "measured": row["verdict"]}


def judged_verdict(item: list[str], noisy: bool) -> list[str]:
    """A (figure, value, target, verdict) item with its verdict `judged`."""
    return [*item[:3], judged(item[3], noisy)]


def _base_of(v: str, base: str) -> str:
    """The hand loop a variant is paired with: a variant run by another commit's code (``dltrain@<rev>``, see
    ``scripts/bench --baseline``) is paired with the hand loop of the same worker (``hand@<rev>``)."""
    tag = v.partition("@")[2]
    return f"{base}@{tag}" if tag and base == "hand" else base


def _paired(res: dict[str, list[dict[str, Any]]], v: str, key: str, base: str = "hand") -> list[float]:
    """Per-round ratios res[v][key] / res[base][key]."""
    ref = {r["rep"]: r for r in res.get(_base_of(v, base), []) if "error" not in r}
    return [r[key] / ref[r["rep"]][key] for r in res.get(v, []) if "error" not in r and r["rep"] in ref]


def _ratio_of_ratios(res: dict[str, list[dict[str, Any]]], before: str, key: str) -> list[float]:
    """Per round: (dltrain / its hand loop) / (``before`` / its hand loop): the change, with each worker's own
    speed divided out."""
    def by_rep(v: str) -> dict[int, float]:
        ref = {r["rep"]: r for r in res.get(_base_of(v, "hand"), []) if "error" not in r}
        return {r["rep"]: r[key] / ref[r["rep"]][key] for r in res.get(v, []) if "error" not in r and r["rep"] in ref}

    after, prior = by_rep("dltrain"), by_rep(before)
    return [after[rep] / prior[rep] for rep in sorted(after) if rep in prior]


def _paired_diff_us(res: dict[str, list[dict[str, Any]]], v: str, key: str, steps: int) -> list[float]:
    ref = {r["rep"]: r for r in res.get(_base_of(v, "hand"), []) if "error" not in r}
    return [1e6 * (r[key] - ref[r["rep"]][key]) / steps for r in res.get(v, []) if "error" not in r and r["rep"] in ref]


LOOP_LEGEND = (
    "Ratios are per-round pairs (variant / hand loop of the same round), median and range over rounds. "
    "**CPU** = CPU seconds of the worker process (`time.process_time`, all threads), **wall** = elapsed seconds. "
    "*Median step* = the median over the run's steps of the time from one step's end to the next step's end "
    "(data fetch, hooks and compute of one step); a step slowed by a neighbour on this shared machine is an outlier "
    "the median ignores, which is why the per-step verdict uses it (whole-fit CPU sums varied by 30 % between "
    "identical runs here). *fit* = the whole `fit()` call: set-up, loop, end-of-fit logging and checkpoint; its "
    "verdict is shown too. Overhead µs/step: median-step difference to the hand loop / (fit CPU - hand fit CPU) "
    "/ steps. *fixed ms* = fit CPU minus loop CPU (per-fit set-up and teardown, e.g. the final checkpoint).")


def _loop_table(res: dict[str, list[dict[str, Any]]], variants: list[str], steps: int,
                rss_of: dict[str, float] | None = None) -> list[str]:
    lines = ["| loop | steps/s (wall) | median step µs (CPU) | **step ratio, CPU** | step ratio, wall | fit ratio, CPU "
             "| fit ratio, wall | overhead µs/step: median step / whole fit (CPU) | fixed ms (CPU) | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        rs = [r for r in res.get(v, []) if "error" not in r]
        if not rs:
            err = res[v][0].get("error") if res.get(v) else "no runs"
            lines.append(f"| {v} | failed: {err} |||||||||")
            continue
        sc, sw = _paired(res, v, "c_step_med"), _paired(res, v, "t_step_med")
        cf, wf = _paired(res, v, "c_fit"), _paired(res, v, "t_fit")
        over_fit = _paired_diff_us(res, v, "c_fit", steps)
        over_step = _paired_diff_us(res, v, "c_step_med", 1)
        sps = _med([r["steps"] / r["t_fit"] for r in rs])
        fixed = _med([1000 * (r["c_fit"] - r["c_loop"]) for r in rs])
        if rss_of is None:
            rss = f"{max(r['rss_mb'] for r in rs):.0f}"
        else:
            rss = f"{rss_of[v]:.0f}" if v in rss_of else "-"
        lines.append(f"| {v} | {sps:,.1f} | {1e6 * _med([r['c_step_med'] for r in rs]):,.0f} | "
                     f"**{_med(sc):.3f}** ({_spread(sc)}) | {_med(sw):.3f} ({_spread(sw)}) | "
                     f"{_med(cf):.3f} ({_spread(cf)}) | {_med(wf):.3f} ({_spread(wf)}) | "
                     f"{_med(over_step):+.0f} / {_med(over_fit):+.0f} | {fixed:.1f} | {rss} |")
    return lines


def _fmt_dict(d: Any) -> str:
    if not isinstance(d, dict):
        return str(d)
    parts = []
    for k, v in d.items():
        if isinstance(v, float):
            parts.append(f"{k}: {v:,.1f}" if abs(v) >= 10 else f"{k}: {v:.3g}")
        elif isinstance(v, dict):
            parts.append(f"{k}: {{{_fmt_dict(v)}}}")
        else:
            parts.append(f"{k}: {v}")
    return "; ".join(parts)


METHOD = """## Method

- **Process model.** Runs execute in long-lived worker processes (`scripts/benchlib/core.py --serve`) that
  import their stack once; repeats run in the same process, never a fresh subprocess per repeat (importing torch
  + Lightning takes seconds to tens of seconds on a loaded 2-core machine). Cases 1-2: all loops (hand, dltrain,
  Fabric, Lightning; in case 1 also dltrain with `ThroughputMonitor`, without and with MFU) are timed
  in ONE shared worker (everything imported, one un-counted warm-up run per loop), because separate processes
  running the identical hand loop differed by up to 10 % (heap/cache layout), more than the 3 % target. Their peak
  RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) and cold start (launch to the end of the first fit, imports
  included, one sample) come from a dedicated fresh process per loop, launched one at a time; case 2's RSS
  includes case 1, run first in that process. Case 3 and 5: one worker per pipeline, a warm-up run first.
- **Interleaving.** The parent sends runs in rounds, every variant once per round (A, B, C, D, then B, C, D, A,
  ... rotated each round), so slow phases of a noisy machine hit all variants alike. Ratios are computed per
  round (paired) and the median over rounds is reported with the range; absolute figures are medians too.
- **Threads.** Workers run with `OMP_NUM_THREADS=1` and `torch.set_num_threads(1)`; the parent only waits.
- **What is timed.** Cases 1, 2, 4: `t_fit` runs from just before `trainer.fit(...)` (after the Trainer, the task
  and the DataLoader are built) to its return; it includes Fabric set-up, the loader wrapping, logger set-up and
  the default end-of-epoch checkpoint. The hand loop times the same span (loop only; the Fabric loop includes
  `fabric.setup`/`setup_dataloaders`). `loop-only` time is first `on_train_batch_start` to last
  `on_train_batch_end` (a tiny timing callback; the hand loops take the same time stamps inline). Every loop logs
  the loss the same way: `self.log("train/loss", loss)` every step in the Trainers (read every 50 steps by their
  defaults), `loss.item()` every 50 steps in the hand loops. Defaults stay on for dltrain and Lightning (progress
  bar, CSV logger, checkpoint at the end; `default_root_dir` in a temp dir; stderr goes to a log file).
- **Data (case 3).** Shards are written once per invocation; the map-style dataset holds the same samples' raw
  bytes in memory and decodes them with the same function. Time to first batch is measured from building the
  loader (for `StreamingDataset`: from building the dataset) to the first batch; the gap between epochs is from
  the end of the first epoch's iteration to the first batch of the next (persistent workers, `set_epoch` where the
  loader has it).
- **Resume (case 5).** The checkpoints are written once per worker by a real mid-epoch `trainer.save_checkpoint`
  from a callback; each measured run builds a fresh Trainer/loader, calls `fit(ckpt_path=...)`, and a callback
  records the time of the first `on_train_batch_start` (and checks that training resumed at the saved step).
- **DDP (case 4).** One `torchrun --standalone --nproc_per_node=2` job runs the hand-written DDP loop and dltrain
  alternately in the same two processes (same process group; dltrain's Fabric reuses it), one warm-up round, then
  the measured rounds.
"""


def summary(verdicts: list[tuple[str, str, str, str]], notes: list[str], load: str = "") -> str:
    """The verdicts and notes as plain text for the terminal (``load``: the machine's load during the run)."""
    w = max((len(f) for f, *_ in verdicts), default=10)
    rows = [f"{f:<{w}}  {v:>10}  target {t:<10}  {s}" for f, v, t, s in verdicts]
    return "\n".join(["", "=" * (w + 40), *([load] if load else []), *rows, "=" * (w + 40),
                      *[f"note: {n}" for n in notes]])




# ------------------------------------------------------------------------------------------- results as data

# The step time each case's ratio to the hand loop is taken on (the key its verdict uses).
RATIO_KEYS = {"loop": "c_step_med", "cnn": "c_step_med", "ddp": "t_step_med", "resnet": "t_step", "gpt": "t_step"}
# Case-3 pipelines that are dltrain's own; every other pipeline of the case is a peer.
DLTRAIN_LOADERS = ("streaming", "streaming-pipe", "pipe-no-read-ahead", "mixture")
PLOT_TITLES = {
    "ratio": "Step time / hand-written loop (median of paired rounds, line = range)",
    "loaders": "Data loaders: samples/s over the same shards (median)",
    "gpu": "GPU: throughput and model FLOPs utilisation",
}


def headline(family: str, figure: str, dltrain: str, peer: str, limit: str, verdict: str) -> dict[str, str]:
    """One row of the summary table."""
    return {"family": family, "figure": figure, "dltrain": dltrain, "peer": peer, "limit": limit,
            "verdict": verdict}


def summary_table(rows: list[dict[str, str]]) -> list[str]:
    """The one-screen summary: one markdown row per headline figure."""
    if not rows:
        return ["No headline figures: no case ran to completion."]
    lines = ["| figure | dltrain | best peer | limit or target | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        verdict = f"**{r['verdict']}**" if r["verdict"] == "MISS" else r["verdict"]
        if r["verdict"] == NOISY and r.get("measured") in ("PASS", "MISS"):
            verdict += f" (measured {r['measured']})"
        lines.append(f"| {r['figure']} | {r['dltrain']} | {r['peer']} | {r['limit']} | {verdict} |")
    return lines


def _ok_runs(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rs if "error" not in r]


def figures(results: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """What the plots show, computed from the raw runs (``Bench.results``): one entry per plot family.

    ``ratio``: case -> variant -> [median, low, high] of the paired ratios to the hand loop; ``loaders``: workers
    -> pipeline -> median samples/s; ``gpu``: case -> variant -> {"per_s", "unit", "mfu"} (mfu None when the runs
    did not measure it). A family with no data is left out.
    """
    out: dict[str, Any] = {}
    ratio: dict[str, dict[str, list[float]]] = {}
    for case, key in RATIO_KEYS.items():
        res = results.get(case)
        if not isinstance(res, dict) or not _ok_runs(res.get("hand", [])):
            continue
        for v in res:
            if v.partition("@")[0] == "hand" or ":" in v:  # ":warmup" entries are not measured rounds
                continue
            rs = _paired(res, v, key)
            if rs:
                ratio.setdefault(case, {})[v] = [_med(rs), min(rs), max(rs)]
    if ratio:
        out["ratio"] = ratio
    loaders: dict[str, dict[str, float]] = {}
    for name, rs in (results.get("data") or {}).items():
        v, _, nw = name.rpartition("/")
        ok = _ok_runs(rs)
        if ok:
            loaders.setdefault(nw, {})[v] = _med([r["samples_per_s"] for r in ok])
    if loaders:
        out["loaders"] = loaders
    gpu: dict[str, dict[str, dict[str, Any]]] = {}
    for case in ("resnet", "gpt"):
        res = results.get(case)
        if not isinstance(res, dict):
            continue
        c = cfg.get(case, {})
        per_step, unit = (c.get("batch", 0) * c.get("context", 0), "tokens/s") if case == "gpt" else \
            (c.get("batch", 0), "images/s")
        for v, rs in res.items():
            ok = [r for r in _ok_runs(rs) if r.get("t_step", 0) > 0] if ":" not in v else []
            if not ok or not per_step:
                continue
            mfu = [r["mfu"] for r in ok if r.get("mfu") is not None]
            gpu.setdefault(case, {})[v] = {"per_s": per_step / _med([r["t_step"] for r in ok]), "unit": unit,
                                           "mfu": _med(mfu) if mfu else None}
    if gpu:
        out["gpu"] = gpu
    return out


def write_plots(figs: dict[str, Any], folder: str | Path, targets: dict[str, float] | None = None) -> dict[str, Path]:
    """One PNG per family present in ``figs`` (see :func:`figures`), written into ``folder``; family -> path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on the machines this runs on
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for family, draw in (("ratio", _plot_ratio), ("loaders", _plot_loaders), ("gpu", _plot_gpu)):
        if not figs.get(family):
            continue
        fig = draw(plt, figs[family], targets or {})
        fig.suptitle(PLOT_TITLES[family], fontsize=10)
        fig.tight_layout()
        path = folder / f"{family}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[family] = path
    return written


def _plot_ratio(plt: Any, data: dict[str, dict[str, list[float]]], targets: dict[str, float]) -> Any:
    labels, meds, lows, highs, colors, marks = [], [], [], [], [], []
    for case, variants in data.items():
        for v, (m, lo, hi) in variants.items():
            labels.append(f"{case}: {v}")
            meds.append(m)
            lows.append(m - lo)
            highs.append(hi - m)
            colors.append("tab:blue" if v.startswith("dltrain") else "tab:gray")
            # The targets are dltrain's: no tick on the peers' rows.
            marks.append(targets.get("cuda" if case in ("resnet", "gpt") else case) if v == "dltrain" else None)
    fig, ax = plt.subplots(figsize=(7.5, 0.3 * len(labels) + 1.3))
    y = list(range(len(labels)))[::-1]
    for yi, m, lo, hi, col in zip(y, meds, lows, highs, colors):
        ax.errorbar([m], [yi], xerr=[[lo], [hi]], fmt="o", color=col, capsize=2, markersize=4)
        ax.annotate(f"{m:.3f}", (m, yi), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    for yi, t in zip(y, marks):
        if t is not None:
            ax.plot([t, t], [yi - 0.35, yi + 0.35], color="tab:red", linewidth=1.2)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    # Log scale: Lightning's ~3x and dltrain's few percent in one readable axis.
    ax.set_xscale("log")
    ticks = [t for t in (0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 3, 4, 6, 10)
             if min(m - lo for m, lo in zip(meds, lows)) * 0.9 <= t <= max(m + hi for m, hi in zip(meds, highs)) * 1.1]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("ratio to the hand loop (log scale; 1 = level; red tick = target; blue = dltrain)", fontsize=8)
    return fig


def _plot_loaders(plt: Any, data: dict[str, dict[str, float]], targets: dict[str, float]) -> Any:
    pipelines = sorted({v for by in data.values() for v in by}, key=lambda v: (DLTRAIN_LOADERS.index(v) if v in DLTRAIN_LOADERS else len(DLTRAIN_LOADERS), v))
    counts = sorted(data, key=int)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    width = 0.8 / len(counts)
    for i, nw in enumerate(counts):
        xs = [j + i * width for j in range(len(pipelines))]
        ax.bar(xs, [data[nw].get(v, 0.0) for v in pipelines], width, label=f"{nw} workers")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(pipelines))], pipelines, rotation=25, ha="right",
                  fontsize=8)
    ax.set_ylabel("samples/s (last epoch)", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(fontsize=8)
    return fig


def _plot_gpu(plt: Any, data: dict[str, dict[str, dict[str, Any]]], targets: dict[str, float]) -> Any:
    # One row per case: its own throughput unit (tokens/s, images/s), and its MFU where the runs measured it.
    has_mfu = any(d["mfu"] is not None for variants in data.values() for d in variants.values())
    fig, axes = plt.subplots(len(data), 2 if has_mfu else 1, figsize=(7.5, 1.2 + 1.1 * len(data)), squeeze=False)
    for row, (case, variants) in enumerate(data.items()):
        names = list(variants)[::-1]
        ax = axes[row][0]
        ax.barh(names, [variants[v]["per_s"] for v in names], color="tab:blue")
        ax.set_title(case, fontsize=8, loc="left")
        ax.set_xlabel(variants[names[0]]["unit"], fontsize=8)
        ax.tick_params(labelsize=8)
        if has_mfu:
            ax = axes[row][1]
            mfu = [variants[v]["mfu"] for v in names]
            ax.barh(names, [100 * (x or 0.0) for x in mfu], color="tab:green")
            for i, x in enumerate(mfu):
                ax.annotate(f"{100 * x:.1f} %" if x is not None else "not measured", (100 * (x or 0.0), i),
                            textcoords="offset points", xytext=(3, 0), va="center", fontsize=7)
            ax.set_xlim(0, max([50.0] + [115 * x for x in mfu if x is not None]))
            ax.set_xlabel("MFU (%)", fontsize=8)
            ax.tick_params(labelsize=8)
    return fig


def report(doc: dict[str, Any], plots: dict[str, Path] | None = None, out: str | Path | None = None) -> str:
    """The markdown report of one run's results document (``Bench.document()``); plot paths relative to ``out``."""
    m = doc["meta"]
    verdicts = doc["verdicts"]
    passed = sum(1 for v in verdicts if v[3] == "PASS")
    noisy = sum(1 for v in verdicts if v[3] == NOISY)
    load = (f"load average at start {m['load']}, at end {m.get('load_end', '?')}"
            + (f", highest sampled {m['load_max']:.1f}" if "load_max" in m else ""))
    if noisy:
        met = (f"the load average exceeded {m.get('quiet_load', 1.5)} during the run, so {noisy} of "
               f"{len(verdicts)} verdicts are \"noisy\" instead of PASS/MISS (rerun on a quiet machine)")
    else:
        met = f"{passed} of {len(verdicts)} targets met"
    base = Path(out).resolve().parent if out else None
    lines = [
        "# dltrain benchmarks", "",
        "Every figure below comes from one invocation of `scripts/bench`; regenerate with the command shown.", "",
        "## Summary", "",
        f"`{m['command']}`" + (" (quick smoke run: small sizes, few repeats)" if m.get("quick") else "")
        + f", {m['date']}; {m['cpu']} ({m['cores']} cores), {load}; {met}.", "",
        *summary_table(doc["headlines"]), "",
    ]
    for family, path in (plots or {}).items():
        rel = Path(os.path.relpath(Path(path).resolve(), base)) if base else Path(path)
        lines += [f"![{PLOT_TITLES[family]}]({rel.as_posix()})", ""]
    lines += [
        "## Machine and run", "",
        f"- command: `{m['command']}`",
        f"- date: {m['date']}",
        f"- CPU: {m['cpu']} ({m['cores']} cores visible), load average at start {m['load']}, at end "
        f"{m.get('load_end', '?')}",
        f"- GPU: {m['gpu']}",
        f"- Python {m['python']}, torch {m['torch']}, lightning {m['lightning']}, webdataset {m['webdataset']}, "
        f"dltrain {m['dltrain']} (git {m['git']})",
        f"- wall time of the whole run: {m['elapsed_s'] / 60:.1f} min",
        "",
        "## Results", "",
        *doc["sections"],
        "### Every target of the run", "",
        "| figure | measured | target | result |", "|---|---|---|---|",
        *[f"| {f} | {v} | {t} | {s} |" for f, v, t, s in verdicts], "",
    ]
    if doc["notes"]:
        lines += ["### Notes from the run", "", *[f"- {n}" for n in doc["notes"]], ""]
    missed = [f for f, _, _, st in verdicts if st == "MISS"]
    if missed:
        lines += ["Targets missed in this run: " + "; ".join(missed) + ". What the profiles showed about them, "
                  "and the fixes, are in BENCHMARKS.md under *Findings*.", ""]
    lines += [METHOD, ""]
    for i, path in enumerate(m.get("include", [])):
        text = Path(path).read_text()
        # Drop its title line and its Method section (the same as ours); demote its headings by one level.
        text = text.split("\n## Method", 1)[0]
        kept = [ln for ln in text.splitlines() if not ln.startswith(("# dltrain benchmarks", "Every figure below"))]
        body = "\n".join(("#" + ln if ln.startswith("#") else ln) for ln in kept).strip()
        notes = m.get("include_note", [])
        note = notes[i] if i < len(notes) else ""
        lines += [f"## Included: another invocation ({Path(path).name})", "",
                  "The figures below come from a separate run of `scripts/bench` on another machine (its command, "
                  "machine and date are in its own header); they are not comparable with the figures above.",
                  *([f"**Note:** {note}"] if note else []), "", body, ""]
    return "\n".join(lines)
