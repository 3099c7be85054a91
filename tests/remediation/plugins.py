"""Installing a throwaway plugin for python actions: a real ``*.dist-info`` with
``entry_points.txt`` and a module beside it, found by importlib.metadata
through ``sys.path`` exactly as an installed package would be."""

from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path
from textwrap import dedent
from types import ModuleType

import pytest

GROUP = "incident.remediations"


def install_plugin(
    directory: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    functions: dict[str, str],
) -> str:
    """Write ``source`` as a fresh module and register ``functions`` (entry-point
    name → attribute of the module) under the remediations group. Returns the
    module's name; ``sys.path`` and ``sys.modules`` are restored after the test."""
    module = f"incident_test_plugin_{uuid.uuid4().hex[:12]}"
    (directory / f"{module}.py").write_text(dedent(source))
    dist_info = directory / f"{module}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n"
    )
    lines = [f"{name} = {module}:{attribute}" for name, attribute in functions.items()]
    (dist_info / "entry_points.txt").write_text(f"[{GROUP}]\n" + "\n".join(lines) + "\n")
    # syspath_prepend also invalidates importlib's caches, metadata's included.
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return module


def plugin_module(name: str) -> ModuleType:
    return importlib.import_module(name)
