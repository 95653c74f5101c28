"""The documentation site as a reader gets it: built with --strict, served on 127.0.0.1, opened in Chromium.

One build (what ``scripts/docs`` runs) serves every check:

- no internal link or anchor of the built site is broken (every ``href``/``src`` of every page, the generated
  API pages included);
- the front page, a guide and an API page render in headless Chromium (Debian's ``chromium``, which scripts/test's
  set-up installs; playwright drives it, no browser is downloaded): no console error, no failed request, the
  navigation and the search box are there, the API page lists ``Trainer.fit``; searching finds the Trainer.

Screenshots of the three pages are written to ``$DLTRAIN_DOCS_SCREENSHOTS`` (default: the test's temporary folder).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = {  # what to open, and what must be on it
    "front": ("index.html", "Two commands"),
    "guide": ("guides/resume.html", "What resume guarantees"),
    "api": ("reference/dltrain/index.html", "Trainer"),
}


def chromium() -> str:
    """The Chromium to drive: $DLTRAIN_CHROMIUM, else the system's."""
    found = os.environ.get("DLTRAIN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("no Chromium: install Debian's package (`apt-get install -y chromium`, which scripts/test's "
                    "set-up does when it runs as root) or point DLTRAIN_CHROMIUM at a Chromium binary")
    return found


def build_site(site: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true", "WANDB_MODE": "offline"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docs") / "site"
    build_site(folder)
    return folder


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _Links(HTMLParser):
    """The ids of a page and the URLs it refers to."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if values.get(key):
                self.ids.add(values[key] or "")
        for key in ("href", "src"):
            if values.get(key) and not (tag == "link" and values.get("rel") in ("preconnect", "dns-prefetch")):
                self.urls.append(values[key] or "")


def broken_links(site: Path) -> list[str]:
    """Every internal link of the built site whose file or anchor does not exist."""
    parsed: dict[Path, _Links] = {}

    def parse(page: Path) -> _Links:
        if page not in parsed:
            links = _Links()
            links.feed(page.read_text(encoding="utf-8", errors="replace"))
            parsed[page] = links
        return parsed[page]

    broken = []
    for page in sorted(site.rglob("*.html")):
        for url in parse(page).urls:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith(("mailto:", "javascript:", "data:")):
                continue
            path, fragment = urldefrag(url)
            path = unquote(urlsplit(path).path)
            if path.startswith("/"):
                target = site / path.lstrip("/")
            else:
                target = (page.parent / path) if path else page
            if target.is_dir():
                target = target / "index.html"
            where = f"{page.relative_to(site)}: {url}"
            if not target.resolve().is_relative_to(site.resolve()) or not target.exists():
                broken.append(f"{where} (no file {target.relative_to(site) if target.is_relative_to(site) else target})")
            elif fragment and target.suffix == ".html" and unquote(fragment) not in parse(target).ids:
                broken.append(f"{where} (no anchor #{fragment} in {target.relative_to(site)})")
    return broken


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~40 s of CPU (the build ~20 s); the suite's 300 s is too short on a loaded machine
def test_the_site_builds_its_links_hold_and_its_pages_render(site: Path, server: str, tmp_path: Path) -> None:
    # One test, not several sharing a module fixture: under pytest-xdist each worker would build the site again.
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 40, f"only {len(pages)} pages were built"
    # The Trainer's settings read as plain typed attributes, not as their private descriptor (_Setting[...]).
    api = next(p for p in pages if 'id="dltrain.Trainer.fit"' in p.read_text(encoding="utf-8"))
    api_html = api.read_text(encoding="utf-8")
    assert 'id="dltrain.Trainer.max_epochs"' in api_html and "_Setting" not in api_html, api
    broken = broken_links(site)
    assert not broken, f"{len(broken)} broken links:\n" + "\n".join(broken[:50])
    _render_in_chromium(server, tmp_path)


def _render_in_chromium(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("DLTRAIN_DOCS_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
            for name, (path, text) in PAGES.items():
                response = page.goto(server + path, wait_until="load")
                assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"
                page.wait_for_load_state("networkidle")
                assert page.locator("nav.md-nav--primary").count() >= 1, f"{path}: no navigation"
                assert page.locator("nav.md-tabs").is_visible(), f"{path}: no navigation tabs"
                assert page.locator("input.md-search__input").count() == 1, f"{path}: no search box"
                assert text in page.locator("article").inner_text(), f"{path}: {text!r} is not on the page"
                page.screenshot(path=str(shots / f"{name}.png"))
            # The API page lists Trainer.fit, under its own anchor, with its signature and docstring.
            fit = page.locator('[id="dltrain.Trainer.fit"]')
            assert fit.count() == 1, "the API page has no dltrain.Trainer.fit entry"
            assert "fit" in fit.inner_text()
            fit.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "api-fit.png"))
            # The search box finds the Trainer (the search index loads in a web worker).
            page.goto(server + "index.html", wait_until="networkidle")
            page.locator("label.md-search__icon, .md-search__input").first.click()
            # Typed key by key, as a reader does: Material runs a query on `keyup` (and once when its worker is
            # ready), so `fill()`, which sends only an `input` event, finds nothing whenever the worker was ready
            # before the fill: that race made this check fail on fast runs.
            page.locator("input.md-search__input").press_sequentially("Trainer", delay=20)
            results = page.locator(".md-search-result__item")
            results.first.wait_for(timeout=20_000)
            assert results.count() >= 1
            page.screenshot(path=str(shots / "search.png"))
        finally:
            browser.close()
    assert not problems, "\n".join(problems)
