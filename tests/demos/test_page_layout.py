"""How the index, every demo page and the dashboard look at a desktop's width and a
phone's, in headless Chromium: a screenshot of each (kept in $SOCKWAY_SCREENSHOTS when set,
else in pytest's temporary directory), no console error, no failed request, a favicon that
loads, a layout made for the width (the viewport meta: a phone without it lays pages out
980 px wide and shrinks them), and nothing wider than the screen, commands included."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from demo_support import WAIT_MS, DemoGateway
from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

PAGES = ["/", "/broadcast.html", "/chat.html", "/canvas.html", "/logs.html", "/tunnel.html", "/echo.html",
         "/admin/"]
WIDTHS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
              "device_scale_factor": 2},
}


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("SOCKWAY_SCREENSHOTS")
    directory = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module", params=list(WIDTHS))
def width_page(request: pytest.FixtureRequest, chromium: Browser) -> Iterator[tuple[str, Page, list[str]]]:
    """One page at one width for the module, and what went wrong on it."""
    context = chromium.new_context(**WIDTHS[request.param])
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}")
            if "ERR_ABORTED" not in (r.failure or "") else None)
    yield request.param, page, problems
    context.close()


@pytest.mark.parametrize("path", PAGES)
def test_page_layout(width_page: tuple[str, Page, list[str]], demo: DemoGateway, shots: Path, path: str) -> None:
    width, page, problems = width_page
    problems.clear()
    response = page.goto(demo.url + path)
    assert response is not None and response.ok, path
    if path == "/admin/":
        page.wait_for_selector("#key-input")
    else:
        page.wait_for_selector("body[data-commands='localized']")
        if path != "/":
            page.wait_for_selector("#status.ok")
    page.wait_for_load_state("load")

    # The favicon the page names loads (an SVG of ours, or the dashboard's inline one).
    icon = page.evaluate("""async () => {
        const link = document.querySelector("link[rel=icon]");
        if (!link) return null;
        if (link.href.startsWith("data:")) return {status: 200, type: "data:"};
        const r = await fetch(link.href);
        return {status: r.status, type: r.headers.get("content-type")};
    }""")
    assert icon is not None, f"{path}: no <link rel=icon>"
    assert icon["status"] == 200 and icon["type"] in ("image/svg+xml", "data:"), icon

    # Laid out for the width, nothing wider than it.
    size = WIDTHS[width]["viewport"]["width"]
    layout = page.evaluate("""() => ({
        inner: window.innerWidth,
        scroll: document.documentElement.scrollWidth,
        cut: [...document.querySelectorAll("pre, code")].filter((e) => e.scrollWidth > e.clientWidth + 1)
                 .map((e) => e.textContent.slice(0, 60)),
    })""")
    assert layout["inner"] == size, f"{path}: laid out {layout['inner']} px wide on a {size} px screen"
    assert layout["scroll"] <= size, f"{path}: {layout['scroll']} px wide on a {size} px screen"
    assert layout["cut"] == [], f"{path}: code cut at the box's edge: {layout['cut']}"

    name = "index" if path == "/" else path.strip("/").replace(".html", "").replace("/", "-")
    page.screenshot(path=str(shots / f"{name}-{width}.png"), full_page=True)
    assert problems == [], f"{path} at {width} width:\n" + "\n".join(problems)
