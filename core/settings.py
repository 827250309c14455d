"""One typed settings object for the whole sidecar.

Sources, highest priority first: keyword overrides (CLI flags), environment variables
``SIDECAR_*``, the TOML file named by ``SIDECAR_CONFIG`` (or passed explicitly), defaults.
Every field is documented in ``docs/configuration.md``; keep both in step.
Settings are built once in ``sidecar/`` and passed down, never read from a module global.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class SmartClient(BaseModel):
    """A SMART Backend Services client: its public keys and the scopes it may ask for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jwks: dict[str, Any] | None = Field(None, description="Its JWK Set (public keys), inline.")
    jwks_file: Path | None = Field(None, description="A file holding its JWK Set.")
    scopes: list[str] = Field(
        default_factory=list,
        description="Scopes it may be granted, e.g. system/*.rs or system/Observation.rs (SMART v2; "
        "v1's .read reads as .rs). system/ scopes reach every patient; patient/ scopes one at a time.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIDECAR_", extra="forbid", frozen=True)

    data_dir: Path = Field(
        Path("./sidecar-data"), description="Where the embedded database, secret and logs live."
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; e.g. postgresql+psycopg://user@127.0.0.1:5432/db. "
        "Unset: SQLite (WAL) at <data_dir>/sidecar.db.",
    )
    sandbox_database_url: str | None = Field(
        None,
        description="PostgreSQL URL `sidecar sandbox` connects with, as a login role that is a member of "
        "`sidecar_model_zone` (created by the migrations): it may read the de-identified store and write "
        "summaries, and is refused the inbox, quarantine, identifier tokens and re-identification map. "
        "Unset: database_url (acceptable for the embedded deployment only).",
    )
    broker_url: str | None = Field(
        None,
        description="RabbitMQ AMQP URL (amqp://guest:guest@127.0.0.1:5672//). Set: the pipeline runs as "
        "Celery tasks and events go to RabbitMQ. Unset: embedded in-process pipeline and event bus.",
    )
    events_url: str | None = Field(
        None, description="AMQP URL for the event exchange; defaults to broker_url."
    )
    events_exchange: str = Field(
        "sidecar.events", description="Topic exchange the outbox relay publishes to."
    )

    mllp_host: str = Field("127.0.0.1", description="Address the MLLP listener binds to.")
    mllp_port: int = Field(2575, ge=0, le=65535, description="MLLP listener port (0: any free port).")
    mllp_max_frame_bytes: int = Field(1_048_576, gt=0, description="Largest accepted MLLP frame.")
    mllp_idle_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Close a connection without traffic this long: only a complete frame, bytes inside "
        "a frame or an ACK written count; bytes between frames (a newline keep-alive) do not.",
    )
    mllp_frame_timeout_s: float = Field(
        60.0,
        gt=0,
        description="A frame (from its start block) must end within this many seconds, else the "
        "connection is closed; also bounds a TLS handshake (at most 60 s).",
    )
    mllp_max_connections: int = Field(
        128, gt=0, description="Concurrent MLLP connections accepted; beyond it a new one is closed at once."
    )
    mllp_max_connections_per_peer: int = Field(
        32,
        gt=0,
        description="Concurrent MLLP connections from one IP address; beyond it that address's new "
        "connections are closed at once (not the others'). Raise it for an interface engine that "
        "sends many feeds from one address.",
    )

    mllp_max_in_flight: int = Field(
        256, gt=0, description="Frames one connection may have in commit before its ACKs (pipelining)."
    )
    mllp_journal: bool | None = Field(
        None,
        description="Acknowledge an MLLP message once it is fsync'd to the intake journal "
        "(`<data_dir>/intake-journal.db`, a file of the listener's own); a mover stores it in the inbox "
        "moments later, exactly once, audited as before. `false`: acknowledge only after the inbox "
        "commit. Unset: on with SQLite (the journal shares the database's disk), off with PostgreSQL "
        "(set `true` where the data directory is on persistent storage: the ACK then waits for a local "
        "fsync instead of a commit on the server, and a database outage is bridged up to "
        "`mllp_journal_max_backlog`). See [intake.md](intake.md#the-intake-journal).",
    )
    mllp_journal_max_backlog: int = Field(
        100_000,
        gt=0,
        description="Journaled messages not yet in the inbox beyond which new MLLP messages are answered "
        "AE/CE (the inbox is not taking them, e.g. the database is down), so senders keep them.",
    )
    mllp_ack_mode: Literal["auto", "original"] = Field(
        "auto",
        description="auto: MSH-15/16 valued means enhanced mode (CA/CE/CR, per MSH-15). original: always "
        "AA/AE/AR, for senders that fill MSH-15/16 yet expect AA.",
    )
    mllp_application_ack_routes: dict[str, str] = Field(
        default_factory=dict,
        description='Return paths for application ACKs (MSH-16), per sender: {"APP": "host:port", '
        '"APP|FACILITY": "host:port"} (MSH-3, MSH-4 namespace ids; the longer key wins). A sender that '
        "asks for application ACKs in enhanced mode and has a route gets AA/AE/AR there once its "
        "message is processed or dead-lettered; without a route it gets none.",
    )
    app_ack_max_attempts: int = Field(
        10, ge=1, description="Delivery attempts of one application ACK before it is dead-lettered."
    )
    app_ack_timeout_s: float = Field(
        10.0, gt=0, description="Connect and reply timeout of one application ACK delivery."
    )
    app_ack_tls_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle: set to deliver application ACKs over TLS, verifying the return "
        "path's certificate (and its host name) against it; unset: plain TCP.",
    )
    app_ack_tls_cert_file: Path | None = Field(
        None,
        description="PEM client certificate for return paths that require one (with app_ack_tls_key_file).",
    )
    app_ack_tls_key_file: Path | None = Field(None, description="PEM private key of app_ack_tls_cert_file.")
    app_ack_wait_for_reply: bool = Field(
        True,
        description="Count an application ACK as delivered only when the sender's system answers it "
        "with CA (or AA). false: once it was written to the connection, for return paths that never "
        "acknowledge an ACK (otherwise they would get it again at every retry).",
    )
    mllp_allowed_peers: list[str] = Field(
        default_factory=list,
        description='Networks allowed to connect, e.g. ["10.1.0.0/16", "127.0.0.1"]; empty: any.',
    )
    mllp_allowed_senders: list[str] = Field(
        default_factory=list,
        description='Sending applications (MSH-3, 1st component) accepted, e.g. ["HIS", "LIS"]; empty: any.',
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate: set with tls_key_file to serve MLLP over TLS."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: when set, senders must present a client certificate it signed."
    )
    charset_default: str = Field(
        "UTF-8", description="Charset (HL7 table 0211 name) assumed when MSH-18 is empty."
    )
    charset_by_sender: dict[str, str] = Field(
        default_factory=dict,
        description='Per-sender charset when MSH-18 is empty: {"APP": "GB 18030-2000", "APP|FACILITY": ...}.',
    )
    drop_dir: Path | None = Field(
        None,
        description="Drop folder for HL7 files (incoming/ done/ failed/ below it); unset: no file connector.",
    )
    drop_poll_interval_s: float = Field(1.0, gt=0, description="How often the drop folder is scanned.")
    drop_settle_s: float = Field(
        0.5,
        ge=0,
        description="A file is taken once unchanged across two scans at least this long apart "
        "and ending at a segment boundary (CR or LF); see drop_renamed_only.",
    )
    drop_max_file_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Larger files go to failed/ unread."
    )
    drop_max_message_bytes: int = Field(
        1_048_576,
        gt=0,
        description="Largest message in a drop file; a larger one is quarantined with its first "
        "this many bytes and the file goes to failed/ (its other messages are stored).",
    )
    drop_incomplete_after_s: float = Field(
        300.0,
        gt=0,
        description="A drop file unchanged this long that still does not end at a segment "
        "boundary (or is empty) goes to failed/ unread as incomplete.",
    )
    drop_renamed_only: bool = Field(
        False,
        description="Safe mode: take drop files at first sight, trusting senders to write under "
        "a temporary name (*.tmp, *.part, *~ or a leading dot) and rename into place.",
    )
    dicom_port: int | None = Field(
        None, ge=0, le=65535, description="DICOM Storage SCP port (0: any free port); unset: no DICOM SCP."
    )
    dicom_host: str = Field("127.0.0.1", description="Address the DICOM Storage SCP binds to.")
    dicom_ae_title: str = Field("SIDECAR", min_length=1, max_length=16, description="AE title of the SCP.")
    dicom_allowed_calling_aets: list[str] = Field(
        default_factory=list,
        description='Calling AE titles accepted, e.g. ["PACS", "CT01"]; others are rejected; empty: any.',
    )
    dicom_allowed_peers: list[str] = Field(
        default_factory=list,
        description='Networks allowed to open DICOM associations, e.g. ["10.2.0.0/16"]; empty: any.',
    )
    dicom_max_pdu: int = Field(65_536, ge=0, description="Largest P-DATA PDU the SCP accepts (0: unlimited).")
    dicom_max_associations: int = Field(
        32,
        gt=0,
        description="DICOM connections open at once, counted from accept (negotiated or not); "
        "one pool worker each.",
    )
    dicom_max_connections_per_peer: int = Field(
        8,
        gt=0,
        description="DICOM connections one peer address may hold at once; more are closed at accept, "
        "so one peer cannot take the slots of another. At most dicom_max_associations.",
    )
    dicom_acse_timeout_s: float = Field(
        10.0, gt=0, description="ARTIM: a DICOM connection that sends no association request is closed."
    )
    dicom_network_timeout_s: float = Field(
        60.0, gt=0, description="A DICOM association that sends no PDU for this long is aborted."
    )
    dicom_dimse_timeout_s: float = Field(
        30.0, gt=0, description="How long a DICOM association may take to send its next DIMSE message."
    )
    dicom_max_object_bytes: int = Field(
        32 * 1024 * 1024,
        gt=0,
        description="Largest DICOM object stored (its Part-10 file); larger ones are refused (0xA701) and "
        "quarantined with their first 64 KiB. Covers CT, MR, CR, DX and most MG; raise it for "
        "multi-frame (tomosynthesis, XA, cine US): the whole object is held in memory once stored.",
    )
    dicom_max_element_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="Largest DICOM element other than pixel data (text, overlays, encapsulated "
        "documents...); objects with a larger one are refused (0xA701) and quarantined.",
    )
    dicom_issuer_default: str = Field(
        "",
        description="Assigning authority of (0010,0020) Patient ID when (0010,0021) Issuer of Patient ID is "
        "empty; set it to the HL7 PID-3 assigning authority (CX.4) so both feeds give one pseudonym.",
    )
    dicom_allow_burned_in: bool = Field(
        False,
        description="Release images that may carry burned-in text (US, secondary capture...); "
        "default: they are dead-lettered.",
    )
    deid_dicom_dir: Path | None = Field(
        None, description="Where de-identified .dcm files are kept. Default <data_dir>/deid-dicom."
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve Prometheus metrics on this port; unset: no metrics endpoint."
    )
    metrics_host: str = Field("127.0.0.1", description="Address of the metrics endpoint.")
    metrics_max_senders: int = Field(
        64,
        ge=0,
        description="Senders (MSH-3|MSH-4) that get metrics labels of their own: the first this many "
        "admitted (past mllp_allowed_senders); later ones and turned-away ones count as `other`, so "
        "invented senders cannot grow /metrics.",
    )
    api_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve the HTTP API (FHIR read/search, status) from `sidecar serve` on this port; "
        "unset: no API. Needs api_tokens: the API refuses to start without one.",
    )
    api_host: str = Field("127.0.0.1", description="Address the HTTP API binds to.")
    api_tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate: set with api_tls_key_file to serve the API over HTTPS "
        "(needed whenever api_host is reachable from other machines: bearer tokens and FHIR "
        "bodies must not cross a network in clear).",
    )
    api_tls_key_file: Path | None = Field(None, description="PEM private key of api_tls_cert_file.")
    api_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Bearer tokens of the API\'s clients, {"client name": "token"}; the name is the actor '
        "in the audit log. Use long random tokens (e.g. `openssl rand -hex 32`).",
    )
    api_auditors: list[str] = Field(
        default_factory=list,
        description="Client names (keys of api_tokens) allowed to search the audit log (GET /audit).",
    )
    api_purposes: dict[str, str] = Field(
        default_factory=dict,
        description='Purpose of use of each API client, {"client name": "code"}, an HL7 v3 PurposeOfUse '
        "code (TREAT, HOPERAT, HRESCH, PUBHLTH, HPAYMT…) recorded in its audit entries and AuditEvents "
        "(HIPAA 164.528's purpose of each disclosure). Clients not listed: HOPERAT.",
    )
    api_population_clients: list[str] = Field(
        default_factory=list,
        description=(
            "Client names (keys of api_tokens) allowed to search across patients (a FHIR search "
            "without patient=); every other client searches one patient's records at a time."
        ),
    )
    smart_clients: dict[str, SmartClient] = Field(
        default_factory=dict,
        description='SMART Backend Services clients, {"client_id": {"jwks": {...} or "jwks_file": '
        '"...", "scopes": ["system/Observation.rs"]}}: they get short-lived access tokens from '
        "POST /auth/token with a JWT signed by their private key (RS384 or ES384).",
    )
    smart_token_lifetime_s: int = Field(
        300, ge=30, le=3600, description="How long an access token from POST /auth/token is valid."
    )
    smart_token_url: str | None = Field(
        None,
        description="The token endpoint's URL as clients address it (the `aud` of their assertions); "
        "unset: this server's own address plus /auth/token (set it behind a proxy).",
    )
    export_retention_s: float = Field(
        3600.0,
        gt=0,
        description="How long the NDJSON files of a FHIR bulk export ($export) stay under "
        "<data_dir>/exports after it completes; then they are deleted (audited).",
    )
    subscription_endpoints: list[str] = Field(
        default_factory=list,
        description="URL prefixes (scheme://host[:port][/path]) a rest-hook Subscription's endpoint must "
        "be under; empty: no subscription is accepted. Keeps API clients from aiming notifications at "
        "hosts the hospital did not choose.",
    )
    subscription_batch: int = Field(
        100, ge=1, le=1000, description="Most events in one rest-hook notification of a FHIR Subscription."
    )
    subscription_max_attempts: int = Field(
        12,
        ge=1,
        description="Tries of one notification (back-off doubling from 1 s up to "
        "subscription_backoff_max_s); then its events are dead-lettered, counted as missed, and the "
        "subscription goes on.",
    )
    subscription_backoff_max_s: float = Field(
        30.0, gt=0, description="The longest wait between two tries of a rest-hook notification."
    )
    subscription_timeout_s: float = Field(
        10.0, gt=0, description="How long a rest-hook endpoint may take to answer a notification."
    )
    api_max_connections: int | None = Field(
        None,
        gt=0,
        description="Concurrent HTTP API connections (TLS handshakes included); over it a connection is "
        "answered 503 and closed at once. Unset: an eighth of the process's file-descriptor limit, "
        "16 to 1024 (`sidecar serve` raises its soft limit to the hard one first), so a flood of "
        "connections cannot take the descriptors MLLP and DICOM need.",
    )
    api_max_connections_per_peer: int | None = Field(
        None,
        gt=0,
        description="Concurrent HTTP API connections from one IP address; unset: a quarter of "
        "api_max_connections, so one peer cannot lock the others out.",
    )
    api_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request (its TLS handshake, head and body) must arrive in full within this many "
        "seconds of its first byte, or of the connection for the first request; bytes trickled in do "
        "not extend it (slowloris). Idle keep-alive connections close after 5 s.",
    )
    api_auth_max_failures: int = Field(
        10,
        gt=0,
        description="Failed authentications from one IP address within api_auth_window_s after which "
        "its requests are answered 429 (with Retry-After) without checking their token.",
    )
    api_auth_window_s: float = Field(
        300.0, gt=0, description="Window of api_auth_max_failures, and how long a throttled source waits."
    )
    api_auth_audit_interval_s: float = Field(
        60.0,
        gt=0,
        description="Failed authentications are audited at once for the first of a source, then as one "
        "entry per source per interval with their count, so a flood writes a few entries, not one each.",
    )

    audit_retention_days: int = Field(
        2192,
        ge=1,
        description="Audit entries older than this many days (default six years: HIPAA 164.528; China's "
        "Cybersecurity Law asks for at least 183) are archived by `sidecar audit archive`: written to a "
        "signed, verified bundle, then emptied in the database (their hashes stay, so proofs hold), "
        "the step itself audited. Nothing is archived by itself.",
    )
    audit_checkpoint_every: int = Field(
        10_000,
        ge=1,
        description="`sidecar serve` signs and stores a checkpoint of the audit log every this many entries "
        "(export bundles carry them, with consistency proofs).",
    )
    audit_checkpoint_interval_s: float = Field(
        600.0,
        gt=0,
        description="... and at least this often (seconds) while the log grows more slowly.",
    )
    audit_syslog_host: str | None = Field(
        None,
        description="Forward every audit entry, as an IHE ATNA syslog message (RFC 5424 over TLS, RFC 5425; "
        "payload: the entry's FHIR AuditEvent), to this audit record repository or SIEM. Unset: no "
        "forwarding. The log is the spool: nothing is lost while the collector is down.",
    )
    audit_syslog_port: int = Field(
        6514, ge=1, le=65535, description="Port of audit_syslog_host (6514: syslog over TLS)."
    )
    audit_syslog_ca_file: Path | None = Field(
        None,
        description="CA certificate(s) (PEM) that the collector's certificate must chain to. "
        "Default: the system's.",
    )
    audit_syslog_cert_file: Path | None = Field(
        None,
        description="This node's certificate (PEM) for the collector, when it asks for one "
        "(ATNA node authentication).",
    )
    audit_syslog_key_file: Path | None = Field(None, description="Private key of audit_syslog_cert_file.")
    audit_syslog_confirm_s: float = Field(
        5.0,
        gt=0,
        description="A forwarded batch counts as delivered once the connection has stayed up this long "
        "after it; when the connection drops, everything not yet counted is sent again (the collector "
        "de-duplicates by the entry's seq, in each message's structured data).",
    )
    audit_signing_key_file: Path | None = Field(
        None,
        description="Ed25519 key that signs the audit log's checkpoints (`sidecar audit checkpoint`). "
        "Default <data_dir>/audit-signing.key, created on first use with mode 0600; keep it (or a "
        "copy of its public half) apart from the database, which it vouches for.",
    )
    secret_file: Path | None = Field(
        None,
        description="File holding the pseudonym secret. Default <data_dir>/secret.key, created on first "
        "run with mode 0600. The secret is never stored in the database.",
    )
    secret: SecretStr | None = Field(None, description="The pseudonym secret itself (overrides secret_file).")
    date_shift_max_days: int = Field(30, ge=1, le=3650, description="Per-patient date shift range ±N days.")
    reid_operators: list[str] = Field(
        default_factory=list,
        description=(
            "Operating-system accounts allowed to run `sidecar reid` (pseudonym -> original identifier), "
            "named as the process's real uid resolves (its passwd name, or uid:<n> without one), never "
            "by LOGNAME/USER. Empty: nobody; every request, granted or refused, is audited."
        ),
    )
    site_timezone: str = Field("UTC", description="IANA zone for HL7 times that carry no offset.")

    summary_coalesce_s: float = Field(
        2.0, ge=0, description="Summary triggers for one patient within this window become one job."
    )
    summary_digest_hour: int | None = Field(
        None,
        ge=0,
        le=23,
        description="Hour of the day (UTC) at which every patient whose record changed since gets a daily "
        "digest summary. Unset: no digests (discharge, lab and imaging report summaries still run).",
    )
    relay_batch_size: int = Field(
        2000,
        gt=0,
        description="Outbox rows published per relay round (a result with ten observations is 11).",
    )
    relay_interval_s: float = Field(0.2, gt=0, description="Relay and job poll interval when idle.")
    pipeline_lanes: int = Field(
        4,
        ge=1,
        le=256,
        description="Celery lanes: a patient's messages always take the same lane and each lane is "
        "processed in order by one worker (`sidecar worker --lane K`), so patients run in parallel.",
    )
    pipeline_batch_max: int = Field(
        500,
        ge=1,
        le=5000,
        description="Most inbox entries the pipeline takes in one batch (one transaction). Batches are "
        "adaptive: an idle pipeline takes what just arrived, a busy one what accumulated meanwhile, "
        "up to this.",
    )
    pipeline_processes: int = Field(
        0,
        ge=0,
        le=64,
        description="Embedded default: pipeline processes `sidecar serve` starts beside the listener "
        "(each takes the lanes i mod N, so a patient's messages stay in order); 0: one per CPU core. "
        "They run at a lower priority (pipeline_nice), so the listener's ACKs come first.",
    )
    pipeline_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness added to the pipeline processes of the embedded default: when the "
        "listener and the pipeline want the same core, the listener gets it (its ACK latency "
        "holds while a backlog is worked off).",
    )
    deid_max_text_chars: int = Field(
        262_144,
        ge=0,
        description="Most free text (characters, over a message's distinct texts) de-identified per "
        "message; a message with more is dead-lettered with the reason, never truncated (raise this and "
        "`sidecar dead-letters retry` it). Scrubbing is linear: ~2-5 µs per character. 0: no cap.",
    )
    deid_budget_ms: int = Field(
        10_000,
        ge=0,
        description="CPU time (the pipeline thread's own, in ms) de-identifying one message may take; "
        "over it, the message is dead-lettered with the reason. A backstop: the text cap keeps messages "
        "far below it. 0: no budget.",
    )
    pipeline_validate: bool = Field(
        False,
        description="Validate every de-identified resource against the FHIR R4 models before storing "
        "it (~0.15 ms per resource). Off by default: property tests prove the mapping's output valid "
        "and `sidecar convert` validates; turn on while trying a new site rule or feed.",
    )
    pipeline_max_attempts: int = Field(
        5, ge=1, description="Transient-failure retries before dead-lettering."
    )
    screen_timeout_s: float = Field(
        10.0,
        gt=0,
        description="How long the sandbox waits for the identified zone's verdict on a prompt or an "
        "answer (known-identifier screening) before deferring the job.",
    )
    screen_max_per_job: int = Field(
        4,
        ge=2,
        description="Screenings the identified zone answers for one summary job (a run needs two: its "
        "prompt and the model's answer); beyond it, and after a verdict of leak, it refuses (audited) "
        "and the job fails. Bounds what the model zone can learn from the verdicts.",
    )
    sandbox_model: str | None = Field(
        None,
        description='The summary model the sandbox runs, as "package.module:factory" (called with no '
        "arguments, returning a sandbox.models.SummaryModel). Unset: the offline extractive summariser.",
    )
    model_base_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible chat-completions server (vLLM, Ollama, Xinference, "
        "llama.cpp), e.g. http://10.0.8.5:8000/v1. The sandbox's HTTP client reaches this host and port "
        "only. Unset: the offline extractive summariser (or sandbox_model).",
    )
    model_name: str = Field(
        "default", description="The model asked for in each request (the server's model id)."
    )
    model_api_key: SecretStr | None = Field(
        None, description="Bearer token for the model server, if it wants one (given to the sandbox only)."
    )
    model_timeout_s: float = Field(
        120.0, gt=0, description="How long one request to the model may take before it is retried."
    )
    model_max_tokens: int = Field(
        1024, gt=0, description="Largest answer asked for; an answer cut at this limit is refused."
    )
    model_max_retries: int = Field(
        2, ge=0, description="Retries of one request on 429, 5xx, timeouts and refused connections."
    )
    model_seed: int = Field(0, description="Seed sent with every request (temperature is always 0).")
    model_version: str | None = Field(
        None, description="Version of the model's weights, for the Device resource of every summary."
    )
    model_weights_digest: str | None = Field(
        None,
        description="Digest of the served weights (e.g. sha256:...), recorded on the model's Device so a "
        "summary names exactly what wrote it.",
    )
    summary_language: Literal["en", "zh"] = Field(
        "en", description="Language summaries are written in (and verified in): en or zh."
    )
    summary_max_sentences: int = Field(12, ge=1, le=60, description="Most sentences a summary may have.")
    log_level: str = Field("INFO", description="Python log level of the JSON-lines logs.")
    log_file: Path | None = Field(
        None,
        description="Append the JSON-lines logs (of every process `sidecar serve` starts) to this file "
        "instead of stderr. `sidecar demo` sets <data_dir>/sidecar.log.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("SIDECAR_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'sidecar.db').resolve()}"

    @property
    def effective_sandbox_database_url(self) -> str:
        return self.sandbox_database_url or self.effective_database_url

    @property
    def effective_events_url(self) -> str | None:
        return self.events_url or self.broker_url

    @property
    def effective_deid_dicom_dir(self) -> Path:
        return self.deid_dicom_dir or self.data_dir / "deid-dicom"

    @property
    def effective_secret_file(self) -> Path:
        return self.secret_file or self.data_dir / "secret.key"

    @property
    def effective_mllp_journal(self) -> bool:
        return self.mllp_journal if self.mllp_journal is not None else self.database_url is None

    @property
    def audit_key_file(self) -> Path:
        return self.audit_signing_key_file or self.data_dir / "audit-signing.key"

    @property
    def intake_journal_file(self) -> Path:
        return self.data_dir / "intake-journal.db"

    @property
    def effective_pipeline_processes(self) -> int:
        return self.pipeline_processes or max(1, os.cpu_count() or 1)

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: pipeline, events and sandbox run in-process."""
        return self.broker_url is None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once; ``overrides`` (from CLI flags) win over everything else."""
    if config_file is not None:
        os.environ["SIDECAR_CONFIG"] = str(config_file)
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
