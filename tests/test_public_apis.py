"""modelyard uses other packages through their public APIs only.

A walk over every module under ``src/`` fails on: an import of a leading-underscore name (or module) from
another distribution; an attribute with a leading underscore read off a module imported from another
distribution (``threading._shutdown``, ``os._exit``); and an assignment into ``sys.modules``. Dunder
names (``__version__``) are public. The checker itself is tested on small sources first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
OURS = "modelyard"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _foreign(module: str | None, level: int = 0) -> bool:
    return level == 0 and module is not None and module.split(".")[0] != OURS


def _rooted_in(node: ast.expr, names: set[str]) -> bool:
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id in names


def _is_sys_modules(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "modules"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    )


def violations(source: str, where: str = "<source>") -> list[str]:
    """Each use of another distribution's private names, or of sys.modules as a place to write."""
    tree = ast.parse(source)
    found: list[str] = []
    foreign_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _foreign(alias.name):
                    continue
                if any(_private(part) for part in alias.name.split(".")):
                    found.append(f"{where}:{node.lineno}: imports the private module {alias.name}")
                foreign_names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and _foreign(node.module, node.level):
            assert node.module is not None
            if any(_private(part) for part in node.module.split(".")):
                found.append(f"{where}:{node.lineno}: imports from the private module {node.module}")
            for alias in node.names:
                if _private(alias.name):
                    found.append(
                        f"{where}:{node.lineno}: imports the private name {node.module}.{alias.name}"
                    )
                foreign_names.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and _rooted_in(node.value, foreign_names):
            found.append(f"{where}:{node.lineno}: uses the private attribute {ast.unparse(node)}")
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
            for target in targets:
                if isinstance(target, ast.Subscript) and _is_sys_modules(target.value):
                    found.append(f"{where}:{node.lineno}: assigns into sys.modules")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and _is_sys_modules(node.func.value)
            and node.func.attr in ("update", "setdefault", "__setitem__", "pop", "popitem", "clear")
        ):
            found.append(f"{where}:{node.lineno}: changes sys.modules with {node.func.attr}()")
    return found


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("from uvicorn.protocols.http.httptools_impl import _x", "imports the private name"),
        ("from kserve._internal import thing", "imports from the private module kserve._internal"),
        ("import asyncio._impl", "imports the private module asyncio._impl"),
        ("import os\nos._exit(0)", "uses the private attribute os._exit"),
        ("import threading as t\nt._shutdown()", "uses the private attribute t._shutdown"),
        ("from kfp import local\nlocal.runner._run()", "uses the private attribute local.runner._run"),
        ("import sys\nsys.modules['kserve'] = None", "assigns into sys.modules"),
        ("import sys\nsys.modules.update({})", "changes sys.modules with update()"),
    ],
)
def test_the_checker_finds_each_kind_of_private_use(source: str, message: str) -> None:
    (found,) = violations(source)
    assert message in found


@pytest.mark.parametrize(
    "source",
    [
        "from modelyard.serving.model import _private_helper",  # our own code
        "from . import _sibling",
        "import numpy\nnumpy.__version__",
        "class A:\n    def f(self):\n        return self._state",
        "import sys\nname in sys.modules",
        "import importlib.abc\nclass F(importlib.abc.MetaPathFinder): ...",
    ],
)
def test_the_checker_lets_public_and_own_names_pass(source: str) -> None:
    assert violations(source) == []


PROTOC_HEADER = "# -*- coding: utf-8 -*-\n# Generated by the protocol buffer compiler.  DO NOT EDIT!"


def test_src_uses_other_packages_through_their_public_apis_only() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.read_text(encoding="utf-8").startswith(PROTOC_HEADER):
            continue  # protoc's output talks to its own runtime: protobuf's contract, never edited
        found += violations(path.read_text(encoding="utf-8"), str(path.relative_to(SRC)))
    assert found == [], "private internals of other packages:\n" + "\n".join(found)
