"""The import-linter contracts hold the model zone's imports: an import of an identified table
or of the settings (which hold the secret) from a sandbox module breaks `lint-imports`.

The probe of issue 17 added `from core.tables import InboxEntry` to a sandbox module and the
contracts stayed kept. Each case here plants one such import in a copy of the source tree and
runs the real `lint-imports` on it, so a contract that stops covering it fails this test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "connectors", "mapping", "deid", "audit", "worker", "sandbox", "sidecar")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(REPO / ".importlinter", root / ".importlinter")
    return root


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_copied_tree_keeps_every_contract(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout[-2000:]


@pytest.mark.parametrize(
    "planted",
    [
        "from core.tables import InboxEntry",
        "from core.identified_tables import ReidEntry",
        "from core.tables import PhiToken",
        "from core.settings import Settings",
        "import core.store",
        "from worker.screen import ScreenService",
        "from deid import Vault",
    ],
)
def test_an_identified_zone_import_in_the_sandbox_breaks_a_contract(tree: Path, planted: str) -> None:
    module = tree / "sandbox" / "prompt.py"
    original = module.read_text()
    module.write_text(original + f"\n{planted}  # planted by the test\n")
    try:
        result = lint(tree)
    finally:
        module.write_text(original)
    assert result.returncode != 0, f"{planted!r} was accepted:\n{result.stdout[-2000:]}"
    assert "sandbox.prompt" in result.stdout
