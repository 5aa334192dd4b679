"""The browser client bundles the gateway serves beside its endpoints (sockjs-client's
build at ``/sockjs.min.js``, which SockJS's iframe transports load inside the gateway's
iframe page, sockjs-protocol "IFrame page"), and where each copy comes from.

A copy is looked for, in this order:

1. the file the configuration names (``sockjs_client``);
2. the copy inside the installed package (``sockway/static/bundles/``): the wheel build
   copies it there from ``node_modules`` (``setup.py``), so that a gateway installed from
   a wheel serves it without the source tree;
3. ``node_modules/<package>/<dist>`` in the working directory or above (a checkout, an
   editable install).

When there is none (a wheel built without ``node_modules``), the route redirects to the
package's exact version on a public CDN, and the iframe page loads it from there, as the
reference SockJS server does by default; the gateway says so in one log line.

This module imports nothing from sockway: ``setup.py`` loads it at build time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["BUNDLES", "PACKAGED_DIR", "SOCKJS", "ClientBundle", "Located"]

PACKAGED_DIR = Path(__file__).resolve().parent / "static" / "bundles"
"""Where the wheel carries its copies (absent in a source checkout)."""

CDN = "https://cdn.jsdelivr.net/npm"


@dataclass(frozen=True)
class ClientBundle:
    """One npm package's browser build, served at ``route``."""

    route: str
    """Where the gateway serves it, e.g. ``/sockjs.min.js``."""
    package: str
    """The npm package, e.g. ``sockjs-client``."""
    version: str
    """The exact version package.json pins: a page's SockJS and the iframe's must match."""
    dist: str
    """The file inside the npm package, e.g. ``dist/sockjs.min.js``."""
    setting: str
    """The ``[server]`` setting that names a file to serve instead."""

    @property
    def filename(self) -> str:
        return PurePosixPath(self.route).name

    @property
    def cdn_url(self) -> str:
        return f"{CDN}/{self.package}@{self.version}/{self.dist}"

    def packaged(self) -> Path | None:
        path = PACKAGED_DIR / self.filename
        return path if path.is_file() else None

    def in_node_modules(self, start: Path) -> Path | None:
        """``node_modules/<package>/<dist>`` in ``start`` or the nearest parent having it."""
        start = start.resolve()
        for directory in (start, *start.parents):
            candidate = directory / "node_modules" / self.package / self.dist
            if candidate.is_file():
                return candidate
        return None

    def locate(self, configured: str | None, cwd: Path | None = None) -> Located:
        """The copy to serve: the configured file, the packaged copy, node_modules
        (see the module's docstring), or none (then ``path`` is None)."""
        if configured:
            path = Path(configured)
            if not path.is_file():
                raise FileNotFoundError(f"{self.setting} = {configured!r}: no such file")
            return Located(self, path, f"{self.setting} = {configured}")
        packaged = self.packaged()
        if packaged is not None:
            return Located(self, packaged, "the copy installed with sockway")
        found = self.in_node_modules(cwd or Path.cwd())
        if found is not None:
            return Located(self, found, str(found))
        return Located(self, None, "nowhere")


@dataclass(frozen=True)
class Located:
    bundle: ClientBundle
    path: Path | None
    source: str

    @property
    def url(self) -> str:
        """What a page (or the iframe page) should load: the local route when there is a
        copy, the CDN otherwise."""
        return self.bundle.route if self.path is not None else self.bundle.cdn_url

    def fallback_message(self) -> str:
        b = self.bundle
        return (f"{b.package} {b.version} is not installed with this gateway (no copy in the package, "
                f"no node_modules/{b.package}/{b.dist} from the working directory up): {b.route} redirects "
                f"to {b.cdn_url}, which browsers must be able to reach; set {b.setting} to a local copy "
                f"to serve it from here")


SOCKJS = ClientBundle("/sockjs.min.js", "sockjs-client", "1.6.1", "dist/sockjs.min.js", "sockjs_client")

BUNDLES: tuple[ClientBundle, ...] = (SOCKJS,)
"""Every bundle the gateway serves; a new client library is one more entry here (and in
package.json)."""
