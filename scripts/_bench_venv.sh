# Sourced by scripts/bench: the overlay venv the benchmarks run in, with pyproject's `bench` extra (LitData,
# mosaic streaming) on top of ./.venv.
#
# Why an overlay and not `pip install -e .[bench]` into .venv: mosaicml-streaming 0.13 pins numpy<2.2 and
# transformers<5 (which pins tokenizers<=0.23.0 and huggingface-hub<1), so installing it into .venv downgrades
# packages the tests and the other engineers use. The overlay (.venv/bench) is a venv whose .pth file adds .venv's
# site-packages *after* its own: everything comes from .venv (torch, dltrain editable, ...) except what the extra
# needs in other versions, which pip installs into the overlay only (pip never uninstalls outside its own prefix).
# Every variant of a benchmark run uses the same interpreter, so they all see the same numpy.
#
# Sets BENCH_PY to the interpreter to use: the overlay's, or .venv's if the extra cannot be installed (offline);
# then the peer loaders report themselves as skipped, with the reason.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="$ROOT/.venv"
OVERLAY="$BASE/bench"
BENCH_PY="$BASE/bin/python"
if [ "${DLTRAIN_BENCH_PEERS:-1}" = "0" ] || [ ! -x "$BASE/bin/python" ]; then
    return 0
fi
base_sp="$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) base=$base_sp"
stamp="$OVERLAY/.dltrain-bench-stamp"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[bench] installing dltrain's bench extra into the overlay venv $OVERLAY (first time: ~2 min)" >&2
    base_exe="$("$BASE/bin/python" -c 'import sys; print(sys._base_executable)')"
    [ -x "$OVERLAY/bin/python" ] || "$base_exe" -m venv "$OVERLAY"
    overlay_sp="$("$OVERLAY/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # addsitedir (not a plain path line) so that .venv's own .pth files, dltrain's editable install among them, run.
    echo "import site; site.addsitedir('$base_sp')" > "$overlay_sp/_dltrain_base_venv.pth"
    reqs="$("$BASE/bin/python" -c 'import tomllib, sys
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["bench"]))' \
        "$ROOT/pyproject.toml")"
    # shellcheck disable=SC2086
    "$OVERLAY/bin/python" -m pip install --quiet $reqs 2>&1 | grep -v -E "^WARNING: Location .* is ignored" >&2 || true
    if "$OVERLAY/bin/python" -c "import dltrain, torch, litdata, streaming" 2>/dev/null; then
        echo "$want" > "$stamp"
    else
        echo "[bench] the bench extra did not install or import; running without the peer loaders" >&2
    fi
fi
if [ -f "$stamp" ]; then
    BENCH_PY="$OVERLAY/bin/python"
fi
