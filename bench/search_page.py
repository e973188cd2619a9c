"""Screenshot of the search page on a real index, driven like a user would: a check run by hand, not a test.

Starts the search server on an index folder (``python -m mclip_hbt.search serve``), opens its page in
headless Chromium through Playwright, types ``--query`` into the query box, adds every ``--also`` phrasing
through the "+ another phrasing" button, presses Search, waits for every thumbnail to load, saves a full-page
screenshot to ``--out`` and prints what the page showed (results per phrasing, the agreement table). The
server is stopped whatever happens; any failed step exits non-zero with the reason.

Build an index first, then run it:

    make search                      # builds the demo index (see its output for the folder)
    # or: python -m mclip_hbt.search index IMAGES --model MODEL --out INDEX
    python -m bench.search_page --index INDEX [--query "corazón rojo"] [--also "red heart" --also "ọkàn pupa"] \
        [--out docs/search_page.png]

Playwright's Python package drives Debian's Chromium (``--chromium``, default /usr/bin/chromium; install it
with ``apt-get install chromium``); it never downloads a browser of its own.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

DEFAULT_ALSO = ("red heart", "ọkàn pupa")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}
#: How long one step in the page (the info, the search, the thumbnails) may take, in milliseconds.
PAGE_TIMEOUT_MS = 120_000


class CheckFailed(Exception):
    """A step failed; the message says which and why."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, type=Path,
                        help="index folder made by `python -m mclip_hbt.search index` (or `make search`)")
    parser.add_argument("--query", default="corazón rojo", help="the first phrasing (default: %(default)s)")
    parser.add_argument("--also", action="append", default=None,
                        help="another phrasing, added with '+ another phrasing'; repeatable "
                             f"(default: {' / '.join(DEFAULT_ALSO)}); --also '' for none")
    parser.add_argument("--k", type=int, default=None, help="results per phrasing (default: the page's default)")
    parser.add_argument("--out", type=Path, default=Path("docs/search_page.png"),
                        help="where the full-page screenshot goes (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="server port; 0 picks a free one (default)")
    parser.add_argument("--chromium", type=Path, default=Path("/usr/bin/chromium"),
                        help="the Chromium executable Playwright drives (default: %(default)s)")
    parser.add_argument("--startup-timeout", type=float, default=120.0,
                        help="seconds the server may take to answer /api/info (default: %(default)s)")
    args = parser.parse_args(argv)
    args.also = [a for a in (DEFAULT_ALSO if args.also is None else args.also) if a.strip()]
    return args


# ------------------------------------------------------------------------------ the server

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(index: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "mclip_hbt.search", "serve", str(index), "--port", str(port), "--host", "127.0.0.1"]


def tail(path: Path, chars: int = 4000) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace")
        return text[-chars:] if len(text) > chars else text
    return ""


def wait_for_server(proc: subprocess.Popen, base: str, log: Path, timeout: float) -> dict:
    """Poll GET /api/info until it answers 200; fail early if the server exits, or after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CheckFailed(f"the server exited with status {proc.returncode} before answering /api/info; "
                              f"its output:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{base}/api/info", timeout=5) as response:
                return json.loads(response.read().decode())
        except urllib.error.HTTPError as err:
            last_error = f"HTTP {err.code}: {err.read()[:300].decode(errors='replace')}"
        except (urllib.error.URLError, OSError, ValueError) as err:
            last_error = str(getattr(err, "reason", err))
        time.sleep(0.5)
    raise CheckFailed(f"the server did not answer {base}/api/info within {timeout:.0f} s (last: {last_error}); "
                      f"its output:\n{tail(log)}")


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


@contextlib.contextmanager
def running_server(index: Path, port: int, startup_timeout: float) -> Iterator[tuple[str, dict]]:
    """The server on ``index`` at 127.0.0.1:``port``, up and answering; yields (base URL, /api/info)."""
    port = port or free_port()
    command = server_command(index, port)
    with tempfile.TemporaryDirectory(prefix="search_page_") as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "wb") as out:
            print("server:", " ".join(command), flush=True)
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            base = f"http://127.0.0.1:{port}"
            started = time.monotonic()
            info = wait_for_server(proc, base, log, startup_timeout)
            print(f"server up after {time.monotonic() - started:.1f} s: {info}", flush=True)
            yield base, info
        finally:
            stop(proc)


# ------------------------------------------------------------------------------ the page

#: Every <img> done loading (lazy ones included: set eager first); returns the file names of broken ones.
ALL_IMAGES_LOADED = "() => [...document.images].every((img) => img.complete)"
BROKEN_IMAGES = "() => [...document.images].filter((img) => img.naturalWidth === 0).map((img) => img.alt || img.src)"


def drive_page(base: str, args: argparse.Namespace) -> dict:
    """Run the search in the page like a user, save the screenshot, return what the page showed."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        raise CheckFailed(f"Playwright is not installed in this Python ({err}): pip install playwright") from err

    messages: list[str] = []
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=str(args.chromium), headless=True, args=CHROMIUM_ARGS)
        except PlaywrightError as err:
            raise CheckFailed(f"could not start Chromium at {args.chromium}: {err}") from err
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.on("console", lambda m: messages.append(f"console.{m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: messages.append(f"page error: {e}"))
            try:
                return _drive(page, base, args, messages)
            except PlaywrightError as err:
                shown = "\n".join(messages[-10:])
                more = f"\nbrowser messages:\n{shown}" if shown else ""
                raise CheckFailed(f"the page did not behave: {err}{more}") from err
        finally:
            browser.close()


def _drive(page, base: str, args: argparse.Namespace, messages: list[str]) -> dict:
    response = page.goto(f"{base}/", wait_until="domcontentloaded")
    if response is None or not response.ok:
        raise CheckFailed(f"GET {base}/ answered {response.status if response else 'nothing'}")
    page.wait_for_selector("#info[data-state]", state="attached")
    header = page.inner_text("#info")
    if page.get_attribute("#info", "data-state") != "ready":
        raise CheckFailed(f"the page could not read /api/info: {header!r}; {page.inner_text('#error')!r}")

    page.fill("#query", args.query)
    for i, text in enumerate(args.also):
        if page.is_disabled("#add-phrasing"):
            raise CheckFailed(f"'+ another phrasing' is disabled after {i + 1} phrasings (the server's max_phrasings)")
        page.click("#add-phrasing")
        box = page.locator("input.also").nth(i)
        box.wait_for(state="visible")
        box.fill(text)
    if args.k is not None:
        page.select_option("#k", str(args.k))
    page.click("#search")

    page.wait_for_selector('#results[data-state="done"], #results[data-state="error"]', state="attached")
    if page.get_attribute("#results", "data-state") == "error":
        raise CheckFailed(f"the search failed in the page: {page.inner_text('#error')!r}")

    # Lazy thumbnails below the fold load only when scrolled to; load them all for the full-page screenshot.
    page.evaluate("() => document.querySelectorAll('img[loading=lazy]').forEach((img) => { img.loading = 'eager'; })")
    page.wait_for_function(ALL_IMAGES_LOADED)
    broken = page.evaluate(BROKEN_IMAGES)
    if broken:
        raise CheckFailed(f"{len(broken)} thumbnail(s) did not load: {', '.join(broken[:5])}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(args.out), full_page=True)

    seen = {"header": header, "url": page.url, "status": page.inner_text("#status"), "phrasings": []}
    columns = page.locator("#results .column")
    if columns.count():
        for i in range(columns.count()):
            column = columns.nth(i)
            seen["phrasings"].append({"query": column.locator(".qtext").inner_text(),
                                      "hits": column.locator(".hit").count(),
                                      "shared": column.locator(".hit.shared").count()})
    else:
        seen["phrasings"].append({"query": args.query, "hits": page.locator("#results .hit").count(), "shared": 0})
    seen["agreement"] = page.inner_text("#agreement") if page.is_visible("#agreement") else None
    seen["browser_messages"] = messages
    return seen


def report(seen: dict, args: argparse.Namespace) -> None:
    print(f"page: {seen['url']}")
    print(f"header: {seen['header']}")
    print(f"status: {seen['status']}")
    for i, phrasing in enumerate(seen["phrasings"], 1):
        shared = f", {phrasing['shared']} in every top k" if len(seen["phrasings"]) > 1 else ""
        print(f"phrasing {i} {phrasing['query']!r}: {phrasing['hits']} results{shared}")
    if seen["agreement"]:
        print("agreement:")
        for line in seen["agreement"].splitlines():
            if line.strip():
                print("   ", line)
    for message in seen["browser_messages"]:
        print("browser:", message)
    print(f"screenshot: {args.out}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if not args.chromium.exists():
            raise CheckFailed(f"no Chromium at {args.chromium}: apt-get install chromium (or pass --chromium PATH)")
        if not args.index.is_dir():
            raise CheckFailed(f"no index folder at {args.index}: build one with `make search` or "
                              "`python -m mclip_hbt.search index IMAGES --model MODEL --out INDEX`")
        with running_server(args.index, args.port, args.startup_timeout) as (base, _info):
            seen = drive_page(base, args)
        report(seen, args)
        expected = 1 + len(args.also)
        if len(seen["phrasings"]) != expected:
            raise CheckFailed(f"the page showed {len(seen['phrasings'])} phrasing(s), expected {expected}")
        if not all(p["hits"] for p in seen["phrasings"]):
            raise CheckFailed("a phrasing came back with no results")
    except CheckFailed as err:
        print(f"search_page: FAILED: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("search_page: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
