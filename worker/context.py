"""Builds the pipeline's context from settings (database, vault, mapping options)."""

from __future__ import annotations

from core.db import Database
from core.settings import Settings
from deid import Vault, load_or_create_secret
from mapping import MappingOptions
from worker.appacks import AppAckPolicy
from worker.options import DicomPipelineOptions
from worker.pipeline import PipelineContext


def load_secret(settings: Settings) -> bytes:
    if settings.secret is not None:
        return settings.secret.get_secret_value().encode()
    path = settings.effective_secret_file
    path.parent.mkdir(parents=True, exist_ok=True)
    return load_or_create_secret(path)


def build_context(settings: Settings, db: Database | None = None) -> PipelineContext:
    if db is None:
        db = Database(settings)
        db.migrate()
    return PipelineContext(
        db=db,
        vault=Vault(load_secret(settings), date_shift_max_days=settings.date_shift_max_days),
        # Validated once after de-identification if at all (pipeline_validate), never twice.
        mapping_options=MappingOptions(default_timezone=settings.site_timezone, validate=False),
        validate=settings.pipeline_validate,
        deid_max_text_chars=settings.deid_max_text_chars,
        deid_budget_ms=settings.deid_budget_ms,
        coalesce_s=settings.summary_coalesce_s,
        digest_hour=settings.summary_digest_hour,
        dicom=DicomPipelineOptions(
            object_dir=settings.effective_deid_dicom_dir,
            authority=settings.dicom_issuer_default,
            allow_burned_in=settings.dicom_allow_burned_in,
        ),
        app_acks=AppAckPolicy(
            settings.mllp_application_ack_routes, original_only=settings.mllp_ack_mode == "original"
        ),
    )
