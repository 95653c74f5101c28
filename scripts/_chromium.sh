# Sourced by scripts/test: the docs browser test (tests/docs/test_site.py) drives the system's Chromium, so install
# Debian's `chromium` package where it is missing and we may (root with apt-get: CI, the development machines).
# Elsewhere it says what to do; the test then fails with the same message rather than skipping.
if [ -z "${DLTRAIN_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "[dltrain] installing Debian's chromium for the docs browser test (first time: a minute)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
            || echo "[dltrain] could not install chromium: tests/docs/test_site.py will fail" >&2
    else
        echo "[dltrain] no chromium: install it (Debian: apt-get install chromium) or set DLTRAIN_CHROMIUM," \
             "else tests/docs/test_site.py fails" >&2
    fi
fi
