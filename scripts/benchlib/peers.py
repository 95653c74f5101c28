"""The peer loaders of cases 3 and 5 (issue 16): LitData and mosaic streaming over the data case's PNG samples.

The samples are the ones ``prepare`` wrote as dltrain tar shards (key, PNG bytes, class), converted once per
worker process into LitData's chunks (``litdata.optimize``) and mosaic's MDS shards (``streaming.MDSWriter``),
with about as many chunks/shards as there are tar shards. Every loader decodes with the data case's
``decode_png`` inside its workers and collates with torch's ``default_collate``; batches are
``(images, classes, keys)`` so that the caller can count keys: each epoch is checked for every sample exactly once.

Both libraries are optional (pyproject's ``bench`` extra, installed by scripts/bench into .venv/bench); without
them a runner raises `PeerMissing`, whose message the report shows in the variant's row.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

from benchlib.datacase import (
    FIELDS,
    DataRunner,
    decode_png,
    decoder_of,
    epoch_check,
    stream_pair,
    tar_samples,
)

PEERS = ("litdata", "mosaic")
_PERF = time.perf_counter


class PeerMissing(RuntimeError):
    """A peer library is not installed (or does not import) in the interpreter running the benchmark."""


def _import(variant: str) -> Any:
    """The peer's module, or `PeerMissing` naming the package and how to get it."""
    name = {"litdata": "litdata", "mosaic": "streaming"}[variant]
    try:
        return __import__(name)
    except Exception as err:  # an ImportError or a version check failing inside the package
        package = {"litdata": "litdata", "mosaic": "mosaicml-streaming"}[variant]
        raise PeerMissing(f"{package} does not import ({type(err).__name__}: {err}); scripts/bench installs "
                          "pyproject's `bench` extra into .venv/bench (DLTRAIN_BENCH_PEERS=0 turns that off)") from err


# ----------------------------------------------------------------------------------------------- conversion


def _lit_shard(url: str) -> Iterator[dict[str, Any]]:
    # optimize() calls this once per input (a tar shard) and writes every sample it yields.
    yield from tar_samples(url)


def convert(variant: str, urls: list[str], out_dir: str, field: str = "png") -> dict[str, Any]:
    """Write the samples of ``urls`` in ``variant``'s format under ``out_dir`` (once; reused when complete).

    Returns ``{"dir", "samples", "files", "convert_s"}``; ``convert_s`` is 0.0 when the data was there already.
    """
    done = os.path.join(out_dir, ".complete")
    t0 = _PERF()
    converted = not os.path.exists(done)
    if converted:
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)
        per = max(sum(1 for _ in tar_samples(urls[0])), 1)
        if variant == "litdata":
            litdata = _import("litdata")
            # One chunk per tar shard; one optimize worker, so chunk order follows the shard order.
            litdata.optimize(fn=_lit_shard, inputs=list(urls), output_dir=out_dir, chunk_size=per, num_workers=1,
                             mode="overwrite", verbose=False, start_method="fork")
        else:
            streaming = _import("mosaic")
            size = max(os.path.getsize(u) for u in urls)
            # size_limit in bytes: about one MDS shard per tar shard (a tar shard also holds headers).
            with streaming.MDSWriter(out=out_dir, columns={"key": "str", field: "bytes", "cls": "int"},
                                     size_limit=size, compression=None) as writer:
                for url in urls:
                    for sample in tar_samples(url):
                        writer.write(sample)
        with open(done, "w") as f:
            f.write("ok\n")
    files = [n for n in os.listdir(out_dir) if n.endswith((".bin", ".mds"))]
    return {"dir": out_dir, "files": len(files), "convert_s": _PERF() - t0 if converted else 0.0}


# ----------------------------------------------------------------------------------------------- loaders


def _lit_item(sample: dict[str, Any], regime: str = "png") -> tuple[Any, int, str]:
    # LitData hands bytes out as a memoryview of its chunk: the raw regime's payload as bytes, as dltrain's is (a
    # memoryview would also be collated element by element).
    decode, field = decoder_of(regime), FIELDS[regime]
    return (decode(sample[field]) if decode else bytes(sample[field])), sample["cls"], sample["key"]


def _mosaic_dataset_cls(regime: str = "png") -> Any:
    streaming = _import("mosaic")
    decode, field = decoder_of(regime), FIELDS[regime]

    class MosaicImages(streaming.StreamingDataset):
        """mosaic's StreamingDataset whose items are decoded like every other loader's."""

        def get_item(self, idx: int) -> tuple[Any, int, str]:
            sample = super().get_item(idx)
            return (decode(sample[field]) if decode else sample[field]), int(sample["cls"]), sample["key"]

    return MosaicImages


def make_loader(variant: str, data_dir: str, batch: int, workers: int, seed: int, regime: str = "png") -> Any:
    """A shuffling loader of ``(images, classes, keys)`` batches over the converted data, persistent workers.

    Each ``iter()`` of it is the next epoch (both libraries count epochs themselves).
    """
    if variant == "litdata":
        litdata = _import("litdata")
        ds = litdata.StreamingDataset(data_dir, shuffle=True, seed=seed,
                                      transform=functools.partial(_lit_item, regime=regime))
        return litdata.StreamingDataLoader(ds, batch_size=batch, num_workers=workers,
                                           persistent_workers=workers > 0,
                                           prefetch_factor=2 if workers else None)
    if variant == "mosaic":
        streaming = _import("mosaic")
        # mosaic keys its shared memory by the local directory: a dataset of a run still alive in this process
        # would clash, so clear stale segments left by an earlier run first (it only removes dead ones).
        streaming.base.util.clean_stale_shared_memory()
        ds = _mosaic_dataset_cls(regime)(local=data_dir, shuffle=True, shuffle_seed=seed, batch_size=batch)
        return streaming.StreamingDataLoader(ds, batch_size=batch, num_workers=workers,
                                             persistent_workers=workers > 0,
                                             prefetch_factor=2 if workers else None)
    raise ValueError(f"unknown peer loader {variant!r}; known: {', '.join(PEERS)}")


def close_loader(loader: Any) -> None:
    """Stop a loader's (persistent) workers now, before the next loader of the same data starts its own."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()


# ----------------------------------------------------------------------------------------------- runners


class PeerDataRunner(DataRunner):
    """Case 3 for a peer: `DataRunner`'s loop and figures (and exactly-once check) over the converted data."""

    def __init__(self, variant: str, cfg: dict[str, Any], urls: list[str], tmp: str) -> None:
        super().__init__(variant, cfg, urls)
        where = variant if self.regime == "png" else f"{variant}-{self.regime}"
        self.info = convert(variant, urls, os.path.join(tmp, "peers", where), self.field)

    def _loader(self, workers: int, rep: int) -> Any:
        return make_loader(self.variant, self.info["dir"], self.cfg["batch"], workers, seed=rep, regime=self.regime)

    def run(self, rep: int, args: dict[str, Any]) -> dict[str, Any]:
        return {**super().run(rep, args), "convert_s": self.info["convert_s"], "files": self.info["files"]}


class PeerResumeRunner:
    """Case 5 for a loader: rebuild it from a state saved at 0/10/90% of an epoch, time to its first batch.

    Each library's own mechanism: LitData's and mosaic's ``StreamingDataLoader.state_dict`` /
    ``load_state_dict`` (mosaic resumes at a sample count), dltrain's ``StreamingDataLoader`` likewise. The
    states are taken once, here (untimed); while taking them, the rest of each resumed epoch is read and checked:
    the batches before the save plus those after the resume hold every sample exactly once.
    """

    def __init__(self, variant: str, cfg: dict[str, Any], urls: list[str], tmp: str) -> None:
        self.variant, self.cfg, self.urls = variant, cfg, urls
        if variant != "dltrain":
            _import(variant)
            self.info = convert(variant, urls, os.path.join(tmp, "peers", variant))
        self.keys = {s["key"] for url in urls for s in tar_samples(url)}
        n = len(self.keys)
        self.batches = math.ceil(n / cfg["batch"])
        self.states: dict[str, Any] = {}
        self.checks: dict[str, dict[str, Any]] = {}
        for at in ("10", "90"):
            k = int(int(at) / 100 * self.batches)
            loader = self._loader()
            before: list[str] = []
            it = iter(loader)
            for _ in range(k):
                before.extend(next(it)[2])
            self.states[at] = loader.state_dict()
            del it
            close_loader(loader)
            resumed = self._loader()
            resumed.load_state_dict(self.states[at])
            after = [key for _x, _y, keys in resumed for key in keys]
            close_loader(resumed)
            self.checks[at] = epoch_check(before + after, self.keys)
            self.checks[at]["resumed_samples"] = len(after)

    def _loader(self) -> Any:
        b, w = self.cfg["batch"], self.cfg["workers"]
        if self.variant == "dltrain":
            from dltrain.data import StreamingDataset

            ds = StreamingDataset(self.urls, batch_size=b, decode={"png": decode_png}, map=stream_pair,
                                  shuffle=True, shuffle_buffer=1000, training=False)
            return ds.loader(num_workers=w)
        return make_loader(self.variant, self.info["dir"], b, w, seed=0)

    def run(self, rep: int, args: dict[str, Any]) -> dict[str, Any]:
        import gc

        at = str(args["at"])
        gc.collect()
        t0 = _PERF()
        loader = self._loader()
        if at in self.states:
            loader.load_state_dict(self.states[at])
        batch = next(iter(loader))
        first = _PERF() - t0
        close_loader(loader)
        del batch
        gc.collect()
        out: dict[str, Any] = {"first_batch_s": first, "batches": self.batches}
        if at in self.checks:
            out["check"] = self.checks[at]
            if not self.checks[at]["exactly_once"]:
                out["error"] = f"resumed at {at}%: not every sample once: {self.checks[at]}"
        return out
