"""The package's layers, as pyproject.toml declares them to import-linter.

The contracts hold for the tree as it is, and each import that used to tie
the domain packages in a circle would break them again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=package_parent, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(package_parent)},
    )


def test_the_layer_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


# Imports the tree had before its layers were declared; each is a way back into a circle.
REMOVED = [
    ("incidents", "incident.notifications.ledger"),  # grouping planned notifications itself
    ("incidents", "incident.remediation.engine"),  # grouping scheduled remediation runs
    ("incidents", "incident.maintenance.watchdog"),  # ingestion split Watchdog alerts there
    ("incidents", "incident.worker.app"),  # tasks lived in the domain packages
    ("notifications", "incident.maintenance.locks"),
    ("remediation", "incident.notifications.ledger"),  # the engine told people itself
    ("rules", "incident.remediation.actions"),  # `rules test` described actions from below
    ("maintenance", "incident.worker.app"),
    ("api", "incident.worker.tasks.incidents"),  # the receiver loaded the whole task graph
]


@pytest.mark.parametrize(("package", "imported"), REMOVED, ids=[f"{p}->{i}" for p, i in REMOVED])
def test_each_removed_cycle_would_break_the_contracts(tmp_path: Path, package: str, imported: str):
    copy = tmp_path / "incident"
    shutil.copytree(ROOT / "incident", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / package / "layer_probe.py").write_text(f"import {imported}  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
    assert f"incident.{package}.layer_probe" in result.stdout


def test_the_receiver_does_not_load_the_worker_tasks():
    loaded = subprocess.run(
        [sys.executable, "-c",
         "import sys, incident.api.app; print('\\n'.join(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    assert not [m for m in loaded if m.startswith("incident.worker.tasks")]
    assert "incident.incidents.grouping" in loaded  # the import ran at all


def test_only_the_lifecycle_writes_timeline_entries_or_changes_an_incidents_state():
    """One place changes an incident: no other module builds a timeline entry or
    assigns an incident's status, severity, or when it was acknowledged or resolved."""
    import re

    writes = re.compile(
        r"TimelineEntry\(|\b(?:incident|last)\.(?:status|severity|in_maintenance|acknowledged_(?:at|by)|resolved_(?:at|by))\s*=[^=]"
    )
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "incident").rglob("*.py"))
        if path.name != "lifecycle.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if writes.search(line) and not line.lstrip().startswith(("class ", "#"))
    ]
    assert not found, "\n".join(found)
