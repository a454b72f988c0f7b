"""The web UI, end to end: the session's build embeds the UI nativellm built with npm, `GET /` on a
llama-server serves it, and headless Chromium (Debian's package, driven by Playwright) renders the chat,
sends a message and reads the instance's reply. A screenshot stays under the test cache's artifacts/."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from nativellm import run
from nativellm.build.ui import find_ui_sources, provision_ui, ui_source_key
from nativellm.client import free_port, wait_ready
from nativellm.errors import UiError
from nativellm.paths import resolve_paths
from nativellm.progress import SilentReporter
from tests.helpers import CACHE, CliResult, cannot_run, nativellm

pytestmark = pytest.mark.slow
ARTIFACTS = CACHE / "artifacts"
# A closed network otherwise floods refused connections (sync, updates, field trials, QUIC).
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--no-default-browser-check", "--disable-features=Translate,MediaRouter",
]  # fmt: skip
ASSISTANT = '[aria-label="Assistant message with actions"]'


@contextmanager
def serving(home: Path, model: Path, log: Path) -> Iterator[str]:
    """The current build's llama-server as an instance runs it: no flag about the UI."""
    port = free_port()
    server = (home / "data" / "current" / "bin" / "llama-server").resolve()
    argv = [str(server), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t", "2", "-c", "512"]
    proc = run.Process(argv, log_file=log)
    base = f"http://127.0.0.1:{port}"
    try:
        h = wait_ready(base, 300, alive=lambda: proc.poll() is None)
        assert h.status == "ok", f"llama-server not ready ({h}):\n{proc.output()[-3000:]}"
        yield base
    finally:
        proc.stop()


def test_the_web_ui_sends_a_chat_message_and_shows_the_reply(
    auto_build: CliResult, session_home: Path, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        cannot_run("chromium is not installed (Debian package chromium; scripts/bootstrap.sh installs it)")
    from playwright.sync_api import sync_playwright

    ui = auto_build.json()["data"]["ui"]
    assert ui is not None, f"the auto build left the web UI out: {auto_build.json()['data']['notes']}"
    assert auto_build.json()["data"]["plan"]["cmake_defines"]["LLAMA_BUILD_UI"] == "ON"
    log = (session_home / "data" / "current" / "build.log").read_text(errors="replace")
    embedded = re.search(r"UI: embedded (\d+) assets", log)
    assert embedded and int(embedded.group(1)) == ui["files"] > 0, "CMake did not embed nativellm's assets"
    assert "UI: npm output up-to-date, skipping build" in log  # CMake ran no npm of its own
    demo = nativellm("model", "demo", "--name", "demo-ui", "--json", home=session_home)
    assert demo.returncode == 0, demo.stderr
    model = Path(demo.json()["data"]["model"]["path"])
    with serving(session_home, model, tmp_path / "server.log") as base:
        page_html = httpx.get(f"{base}/", headers={"Accept-Encoding": "gzip"})
        assert page_html.status_code == 200, f"GET / answered {page_html.status_code}"
        assert page_html.headers["content-type"].startswith("text/html")
        body = page_html.content
        html = (gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body).decode()
        assert "<html" in html.lower() and "_app/" in html  # the SvelteKit app, not an error page

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "web-ui-chat.png"
        t0 = time.monotonic()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=chromium, args=CHROMIUM_ARGS, headless=True, timeout=60_000
            )
            try:
                page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                page.goto(f"{base}/", wait_until="domcontentloaded")
                box = page.locator("textarea").first
                box.wait_for(state="visible", timeout=60_000)  # the chat UI has rendered
                box.fill("Hello from nativellm's browser test")
                box.press("Enter")
                page.locator('[aria-label="User message with actions"]').first.wait_for(timeout=30_000)
                reply = page.locator(f"{ASSISTANT} .agentic-text").first
                reply.wait_for(state="visible", timeout=120_000)
                page.wait_for_function(
                    "s => [...document.querySelectorAll(s)].some(e => e.innerText.trim().length > 0)",
                    arg=f"{ASSISTANT} .agentic-text",
                    timeout=120_000,
                )
                # the reply is complete when its statistics (token count) appear under it
                page.locator(ASSISTANT).get_by_text(re.compile(r"\d+ tokens")).first.wait_for(timeout=120_000)
                text = reply.inner_text().strip()
                page.screenshot(path=str(shot))
            finally:
                browser.close()
        print(f"browser test {time.monotonic() - t0:.1f} s; reply {text[:80]!r}; screenshot: {shot}")
    assert text, "the assistant's reply is empty"
    assert shot.stat().st_size > 10_000


def path_without(tmp: Path, *names: str) -> str:
    """A real PATH with every command of this one except `names` (links in one directory)."""
    bin_dir = tmp / f"bin-without-{'-'.join(names)}"
    bin_dir.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not d or not Path(d).is_dir():
            continue
        for entry in Path(d).iterdir():
            link = bin_dir / entry.name
            if entry.name in names or link.exists() or link.is_symlink():
                continue
            if entry.is_file() and os.access(entry, os.X_OK):
                link.symlink_to(entry)
    return str(bin_dir)


def test_the_ui_cache_serves_a_second_build_without_npm(
    auto_build: CliResult, llama_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ui_dir = find_ui_sources(llama_source)
    assert ui_dir is not None
    first = auto_build.json()["data"]["ui"]
    monkeypatch.setenv("PATH", path_without(tmp_path, "npm", "npx"))
    assert shutil.which("npm") is None
    again = provision_ui(resolve_paths().ui_cache, ui_dir, SilentReporter())
    assert not again.built, "the cached assets were built again"
    assert (again.key, str(again.dist), again.files, again.bytes) == (
        first["key"], first["dist"], first["files"], first["bytes"],
    )  # fmt: skip
    print(
        f"web UI {again.key}: {again.files} files, {again.bytes / 1e6:.1f} MB, found in {again.seconds:.2f} s"
    )


def test_without_npm_the_build_succeeds_without_the_ui_and_names_the_fix(
    llama_source: Path, tmp_path: Path
) -> None:
    home = CACHE / "sessions" / f"noui-{uuid.uuid4().hex[:7]}"  # the session homes' depth: ccache hits
    env = {
        "PATH": path_without(tmp_path, "npm", "npx"),
        "NATIVELLM_UI_CACHE": str(tmp_path / "empty-ui-cache"),
    }
    try:
        res = nativellm("build", "--auto", "--source", str(llama_source), "--json", home=home, env=env)
        assert res.returncode == 0, f"{res.stderr[-3000:]}\n{res.stdout[-2000:]}"
        data = res.json()["data"]
        assert data["ui"] is None
        assert data["plan"]["cmake_defines"]["LLAMA_BUILD_UI"] == "OFF"
        why = "wanted, but npm is not installed, so the web UI cannot be built"
        assert data["plan"]["reasons"]["LLAMA_BUILD_UI"] == why
        warning = next(n for n in data["notes"] if n.startswith("web UI left out:"))
        assert "install Node.js and npm" in warning and "--no-ui" in warning
        assert "warning: web UI left out: npm is not installed" in res.stderr
        demo = nativellm("model", "demo", "--name", "demo-noui", "--json", home=home)
        assert demo.returncode == 0, demo.stderr
        with serving(home, Path(demo.json()["data"]["model"]["path"]), tmp_path / "server.log") as base:
            assert httpx.get(f"{base}/").status_code == 404  # no UI, as the warning said
        print(f"build without npm: {res.seconds:.0f} s")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_npm_offline_is_a_ui_error_that_keeps_its_log_and_no_node_modules(
    llama_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("npm") is None:
        cannot_run(
            "npm is not installed (Debian packages nodejs and npm; scripts/bootstrap.sh installs them)"
        )
    ui_dir = find_ui_sources(llama_source)
    assert ui_dir is not None
    # Offline, for real: a registry nothing listens on and an empty npm cache, no retries.
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    cache = tmp_path / "ui-cache"
    with pytest.raises(UiError) as info:
        provision_ui(cache, ui_dir, SilentReporter())
    assert info.value.message.startswith("npm ci failed (exit ")
    assert "(offline? npm ci needs the npm registry)" in info.value.message
    assert "--no-ui" in info.value.hint
    key = ui_source_key(ui_dir)
    log = cache / f"{key}.log"
    assert log.is_file() and "npm ci" in log.read_text()
    assert not (cache / f"{key}.work").exists() and not (cache / key / "dist").exists()
