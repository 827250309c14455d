"""The shared base of every package: settings (``core.settings``), the database and its
migrations (``core.db``, ``core.migrations``), the tables of both zones (``core.model_tables``,
``core.identified_tables``, re-exported by ``core.tables``), the de-identified store
(``core.store``), the event envelope (``core.events``), FHIR validation (``core.fhir``),
search values (``core.search_index``), Celery's factory and task names (``core.tasks``),
errors, logging, the model zone's database allow-list (``core.zones``) and the front doors'
lazy loading (``core.frontdoor``).

Imports nothing of the project. Members load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.frontdoor import lazy_exports

if TYPE_CHECKING:
    from core.db import Database
    from core.errors import ConfigError, SidecarError, StoreError
    from core.frontdoor import lazy_exports
    from core.logs import configure_logging
    from core.settings import Settings, load_settings

__all__ = [
    "ConfigError",
    "Database",
    "Settings",
    "SidecarError",
    "StoreError",
    "configure_logging",
    "lazy_exports",
    "load_settings",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "ConfigError": "core.errors",
        "Database": "core.db",
        "Settings": "core.settings",
        "SidecarError": "core.errors",
        "StoreError": "core.errors",
        "configure_logging": "core.logs",
        "lazy_exports": "core.frontdoor",
        "load_settings": "core.settings",
    },
)
