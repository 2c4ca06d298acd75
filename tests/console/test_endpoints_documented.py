"""The README's console table documents every JSON endpoint the pages use, and names no endpoint that is
not there."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.routing import Route

from modelyard.console.app import create_app
from modelyard.settings import load_settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
PLACEHOLDERS = {"{name}": "NAME", "{version}": "V", "{run}": "RUN", "{job}": "JOB"}


def _api_routes(tmp_path: Path) -> set[str]:
    app = create_app(load_settings(home=tmp_path))
    found: set[str] = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith("/api/"):
            path = route.path
            for placeholder, word in PLACEHOLDERS.items():
                path = path.replace(placeholder, word)
            found.update(f"{method} {path}" for method in route.methods or () if method != "HEAD")
    return found


def test_every_endpoint_is_in_the_readme_and_every_documented_one_exists(tmp_path: Path) -> None:
    routes = _api_routes(tmp_path)
    section = README.split("## The console", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`((?:GET|POST) /api/[^`?\s]*)", section))
    assert routes - documented == set(), "undocumented"
    assert documented - routes == set(), "documented but not served"
