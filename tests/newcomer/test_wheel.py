"""sockway installed from a wheel, without the source tree: the wheel built here (with
node_modules) carries sockjs-client's build, and the gateway, installed into a fresh
virtual environment and run from a directory with no node_modules above it, serves it;
every SockJS transport then works in headless Chromium, the iframe ones included. A wheel
built without node_modules sends browsers to the CDN, and its gateway says so (this
machine cannot reach the CDN: its log line, redirect and iframe page are what is checked)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from browser.browser_harness import BrowserPage, static_server
from sockway.client_bundles import SOCKJS
from support import ROOT, GatewayProcess, chromium_browser, free_port, require_file

# One build for the module; its first test waits for two wheels and a virtual environment.
pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("wheel"), pytest.mark.timeout(600)]

NODE_CLIENT = ROOT / "node_modules" / SOCKJS.package / SOCKJS.dist
STARTUP_TIMEOUT = 60.0
"""Seconds the installed gateway may take to answer: its first start compiles the
bytecode of every module it imports (installed with --no-compile), slow on a busy machine."""
# What sockjs-client 1.6.1 offers a page of another origin than the gateway's (as in
# tests/browser): the iframe-* ones load the gateway's iframe page, which loads SockJS.
TRANSPORTS = ["websocket", "xhr-streaming", "eventsource", "iframe-eventsource", "iframe-htmlfile", "xhr-polling",
              "iframe-xhr-polling", "jsonp-polling"]


@dataclass
class Installed:
    venv: Path
    wheels: dict[str, Path]  # "bundled" (built with node_modules) and "bare" (without)
    run_dir: Path            # no node_modules here or above

    def install(self, which: str) -> None:
        """This wheel into the virtual environment (its dependencies are there already)."""
        subprocess.run([sys.executable, "-m", "pip", "--python", str(self.venv / "bin" / "python"), "install",
                        "-q", "--no-deps", "--force-reinstall", "--no-compile", str(self.wheels[which])],
                       check=True, capture_output=True, timeout=120)

    def gateway(self, port: int, *args: str) -> GatewayProcess:
        """``sockway serve`` of the installed package (its own interpreter, outside the
        repository), started from ``run_dir``."""
        return InstalledGateway(self.venv / "bin" / "sockway", port, self.run_dir, list(args))


class InstalledGateway(GatewayProcess):
    def __init__(self, program: Path, port: int, cwd: Path, args: list[str]) -> None:
        self.port = port
        self.args = ["serve", "--port", str(port), *args]
        self.log = (cwd / f"gateway-{port}.log").open("w+b")
        self.proc = subprocess.Popen([str(program), *self.args], stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd)
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"


def build_wheel(source: Path, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("sockway-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    require_file(NODE_CLIENT, ": npm install")
    base = tmp_path_factory.mktemp("wheel")
    # The project's files (what git has, and what it would add), without .venv,
    # node_modules or build leftovers; node_modules is linked in for the first build only.
    source = base / "source"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    bare = build_wheel(source, base / "bare")
    shutil.rmtree(source / "build", ignore_errors=True)
    (source / "node_modules").symlink_to(ROOT / "node_modules")
    bundled = build_wheel(source, base / "bundled")
    # A fresh virtual environment with the wheel and its dependencies, as pip resolves them.
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-compile", str(bundled)], check=True, capture_output=True, timeout=600)
    run_dir = base / "run"
    run_dir.mkdir()
    assert not any((d / "node_modules").exists() for d in (run_dir, *run_dir.parents))
    yield Installed(venv, {"bundled": bundled, "bare": bare}, run_dir)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with chromium_browser() as browser:
        yield browser


def fetch(url: str) -> tuple[int, dict, bytes]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_wheel_serves_sockjs_to_every_transport(installed: Installed, chromium: Browser) -> None:
    installed.install("bundled")
    packaged = installed.venv.glob("lib/python*/site-packages/sockway/static/bundles/sockjs.min.js")
    assert [p.read_bytes() for p in packaged] == [NODE_CLIENT.read_bytes()]
    port = free_port()
    # The test page on another origin than the gateway's (its own sockjs-client is served
    # by the test), so that the iframe transports run in the gateway's iframe page.
    with static_server(NODE_CLIENT) as page_origin:
        gateway = installed.gateway(port, "--allowed-origin", page_origin)
        try:
            gateway.wait_ready(STARTUP_TIMEOUT)
            status, _, body = fetch(f"http://127.0.0.1:{port}/sockjs.min.js")
            assert status == 200 and body == NODE_CLIENT.read_bytes()
            status, _, body = fetch(f"http://127.0.0.1:{port}/echo/iframe.html")
            assert status == 200 and b'<script src="/sockjs.min.js"></script>' in body
            context = chromium.new_context()
            try:
                page = BrowserPage(context, page_origin, f"http://localhost:{port}")
                for transport in TRANSPORTS:
                    conn = page.open("/echo", transport)
                    assert page.state(conn)["transport"] == transport
                    iframe = f"http://localhost:{port}/echo/iframe"
                    in_iframe = any(url.startswith(iframe) for url in page.frame_urls())
                    assert in_iframe == transport.startswith("iframe-"), page.frame_urls()
                    page.call("send", conn, f"over {transport} ☃")
                    page.wait_received(conn, 1)
                    assert page.call("messages", conn) == [f"over {transport} ☃"], page.report()
                    page.call("close", conn)
            finally:
                context.close()
            assert "Traceback" not in gateway.output() and "not installed" not in gateway.output()
        finally:
            gateway.stop()


def test_wheel_without_node_modules_points_at_the_cdn(installed: Installed) -> None:
    installed.install("bare")
    assert not list(installed.venv.glob("lib/python*/site-packages/sockway/static/bundles"))
    port = free_port()
    gateway = installed.gateway(port)
    try:
        gateway.wait_ready(STARTUP_TIMEOUT)
        cdn = "https://cdn.jsdelivr.net/npm/sockjs-client@1.6.1/dist/sockjs.min.js"
        status, headers, _ = fetch(f"http://127.0.0.1:{port}/sockjs.min.js")
        assert (status, headers.get("Location")) == (302, cdn)
        status, _, body = fetch(f"http://127.0.0.1:{port}/echo/iframe.html")
        assert status == 200 and f'<script src="{cdn}"></script>'.encode() in body
    finally:
        gateway.stop()
    warnings = [line for line in gateway.output().splitlines() if "sockjs-client" in line]
    assert len(warnings) == 1, gateway.output()
    assert warnings[0].endswith(
        " WARNING sockway: sockjs-client 1.6.1 is not installed with this gateway (no copy in the package, no "
        "node_modules/sockjs-client/dist/sockjs.min.js from the working directory up): /sockjs.min.js redirects to "
        f"{cdn}, which browsers must be able to reach; set sockjs_client to a local copy to serve it from here")


def test_bundle_version_is_package_json_s() -> None:
    """The CDN URL and the build's check use the version package.json pins."""
    import json

    assert json.loads((ROOT / "package.json").read_text())["dependencies"][SOCKJS.package] == SOCKJS.version

