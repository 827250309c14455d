"""The application shell: the `sidecar` command line (``sidecar.cli``), `sidecar serve`'s
wiring of listeners, pipeline, model zone and loops (``sidecar.app``), the HTTP API (FHIR
read, search, $everything, Bulk Data, subscriptions, SMART tokens, AuditEvents and the
auditor page: ``sidecar.api`` and the ``api_*`` modules), storing the model zone's verified
output (``sidecar.outputs``), re-identification (``sidecar.reid``), stats, conversion of
files and the demo's synthetic hospital.

Members load on first use (``core.frontdoor``): `sidecar --help` loads none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.frontdoor import lazy_exports

if TYPE_CHECKING:
    from sidecar.api import api_server, create_api
    from sidecar.app import SidecarApp
    from sidecar.cli import main
    from sidecar.demo import run_demo
    from sidecar.outputs import OutputIntake
    from sidecar.reid import reidentify
    from sidecar.stats import collect

__all__ = [
    "OutputIntake",
    "SidecarApp",
    "api_server",
    "collect",
    "create_api",
    "main",
    "reidentify",
    "run_demo",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "OutputIntake": "sidecar.outputs",
        "SidecarApp": "sidecar.app",
        "api_server": "sidecar.api",
        "collect": "sidecar.stats",
        "create_api": "sidecar.api",
        "main": "sidecar.cli",
        "reidentify": "sidecar.reid",
        "run_demo": "sidecar.demo",
    },
)
