"""The command line answers at once (issue 22): each command imports what it needs when it
runs. Timings are reported by `make bench-cli` (bench/cli_startup.py), never asserted here;
what is asserted is what each command loads, which decides them: `--help` loads none of the
project's libraries, `stats` on a current database neither the ORM nor Alembic, and
`convert` of an HL7 file neither the pipeline, pydicom nor the database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from core.revision import head_revision
from tests.fixtures.messages import ADT_A01

REPO = Path(__file__).resolve().parents[1]


def _loaded(tmp_path: Path, *args: str) -> set[str]:
    """The modules `sidecar ARGS` had loaded when it finished."""
    record = str(tmp_path / "modules.json")
    code = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: open({record!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
        f"sys.argv = ['sidecar', *{list(args)!r}]\n"
        "from sidecar.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "SIDECAR_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return set(json.loads((tmp_path / "modules.json").read_text()))


def test_the_schema_version_without_alembic_is_alembics_head() -> None:
    config = Config()
    config.set_main_option("script_location", str(REPO / "core" / "migrations"))
    assert head_revision() == ScriptDirectory.from_config(config).get_current_head()


def test_help_loads_none_of_the_projects_libraries(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path, "--help")
    assert not {"sqlalchemy", "pydantic", "alembic", "celery", "fastapi", "pydicom"} & loaded


def test_stats_on_a_current_database_loads_neither_the_orm_nor_alembic(tmp_path: Path) -> None:
    _loaded(tmp_path, "stats", "--json")  # the first call creates and migrates the database
    loaded = _loaded(tmp_path, "stats", "--json")
    assert not {"sqlalchemy", "alembic", "celery", "fastapi", "pydicom", "mapping.message"} & loaded


def test_convert_of_an_hl7_file_loads_neither_the_pipeline_nor_dicom(tmp_path: Path) -> None:
    message = tmp_path / "adt.hl7"
    message.write_text(ADT_A01, encoding="utf-8")
    loaded = _loaded(tmp_path, "convert", str(message))
    assert "mapping.message" in loaded  # it did convert
    assert not {"sqlalchemy", "alembic", "celery", "fastapi", "pydicom", "worker.pipeline", "deid"} & loaded
