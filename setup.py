"""The one build step pyproject.toml cannot express: the wheel carries the browser client
bundles the gateway serves (sockjs-client's build, see src/sockway/client_bundles.py),
copied from node_modules at build time, so that a gateway installed from the wheel serves
working SockJS iframe transports without the source tree. Nothing is copied into the
source tree; a wheel built without node_modules carries none, and the gateway then
points browsers at the CDN (and says so when it starts)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def client_bundles():
    """src/sockway/client_bundles.py, loaded on its own (the package's dependencies are
    not installed at build time)."""
    spec = importlib.util.spec_from_file_location("_sockway_client_bundles", ROOT / "src/sockway/client_bundles.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class BuildPyWithClientBundles(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install finds node_modules from the checkout itself
        bundles = client_bundles()
        target_dir = Path(self.build_lib) / "sockway" / "static" / "bundles"
        for bundle in bundles.BUNDLES:
            source = ROOT / "node_modules" / bundle.package / bundle.dist
            if not source.is_file():
                print(f"sockway build: no {source.relative_to(ROOT)}: the wheel carries no {bundle.route} "
                      f"(run npm install first to include it)", file=sys.stderr)
                continue
            installed = json.loads((ROOT / "node_modules" / bundle.package / "package.json").read_text())["version"]
            if installed != bundle.version:
                raise SystemExit(f"sockway build: node_modules has {bundle.package} {installed}, but "
                                 f"src/sockway/client_bundles.py pins {bundle.version}: run npm install")
            target_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target_dir / bundle.filename)


setup(cmdclass={"build_py": BuildPyWithClientBundles})
