# Sourced by scripts/test and scripts/train-example: create or reuse ./.venv and install dltrain into it.
# The install is redone only when pyproject.toml changed since the last one (a stamp in the venv remembers).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DLTRAIN_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[dltrain] creating virtual env $VENV"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.dltrain-install-stamp"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) extras=${DLTRAIN_EXTRAS:-all,dev}"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[dltrain] installing dltrain[${DLTRAIN_EXTRAS:-all,dev}] into $VENV (first time: a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[${DLTRAIN_EXTRAS:-all,dev}]" 2>&1 \
        | grep -v -E "^WARNING: Location .* is ignored" || true
    "$VENV/bin/python" -c "import dltrain, torch, lightning" || { echo "[dltrain] install failed" >&2; exit 1; }
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
