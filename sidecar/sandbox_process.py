"""The model zone's processes, built from the settings here, in the identified zone:
the embedded default's sandbox child of `sidecar serve`, and production's `sidecar sandbox`
Celery worker. The model zone itself gets only what it needs (sandbox.process.SandboxConfig,
or a database, a model and a screen): no settings object, no secret, no vault.

Embedded, the child's screening requests come back over its link and are answered here
with the identified zone's ``ScreenService`` (verdict only, a few per job).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery

from core.children import Children
from core.db import Database
from core.settings import Settings
from core.tasks import make_celery
from sandbox.llm import ModelConfig, load_model
from sandbox.process import SandboxConfig, run_sandbox_child
from sandbox.screen import CeleryScreen
from sandbox.tasks import register_summary_task
from worker.screen import ScreenService

__all__ = ["build_sandbox_app", "model_config", "sandbox_config", "sandbox_process"]


def model_config(settings: Settings) -> ModelConfig | None:
    """The model server's settings, None when ``model_base_url`` is unset."""
    if not settings.model_base_url:
        return None
    key = settings.model_api_key
    return ModelConfig(
        base_url=settings.model_base_url,
        name=settings.model_name,
        api_key=key.get_secret_value() if key is not None else None,
        timeout_s=settings.model_timeout_s,
        max_tokens=settings.model_max_tokens,
        max_retries=settings.model_max_retries,
        seed=settings.model_seed,
        version=settings.model_version,
        weights_digest=settings.model_weights_digest,
    )


def sandbox_config(settings: Settings) -> SandboxConfig:
    return SandboxConfig(
        database_url=settings.effective_sandbox_database_url,
        model=settings.sandbox_model,
        model_config=model_config(settings),
        screen_timeout_s=settings.screen_timeout_s,
        poll_interval_s=settings.relay_interval_s,
        log_level=settings.log_level,
        log_file=settings.log_file,
        nice=settings.pipeline_nice,
        language=settings.summary_language,
        max_sentences=settings.summary_max_sentences,
    )


def sandbox_process(
    settings: Settings,
    screen: ScreenService,
    on_report: Callable[[dict[str, Any]], None] | None = None,
) -> Children:
    """``screen``: serve's own, over its database and vault; it answers the child."""

    def answer(request: dict[str, Any]) -> dict[str, Any]:
        asked = request.get("screen")
        if not isinstance(asked, dict):
            return {"error": "unknown-request"}
        verdict = screen(int(asked["job_id"]), str(asked["text"]), str(asked["stage"]))
        return {"verdict": str(verdict)}

    config = sandbox_config(settings)
    return Children(
        run_sandbox_child,
        name="sidecar-sandbox",
        args_for=lambda _index: (config,),
        on_report=on_report,
        on_request=answer,
    )


def build_sandbox_app(settings: Settings) -> Celery:
    """Production's `sidecar sandbox`: the model zone's login (sandbox_database_url), whose
    grants are core.zones' allow-list; screening by the ``sidecar.screen`` task."""
    app = make_celery(settings, "sidecar-sandbox", results=True)
    state: dict[str, Database] = {}
    url = settings.effective_sandbox_database_url

    def db() -> Database:
        if "db" not in state:
            state["db"] = Database(url=url, model_zone=True)
        return state["db"]

    model = load_model(model_config(settings), settings.sandbox_model)
    register_summary_task(
        app,
        db,
        model,
        CeleryScreen(app, settings.screen_timeout_s),
        language=settings.summary_language,
        max_sentences=settings.summary_max_sentences,
    )
    return app
