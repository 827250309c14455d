"""The `sidecar` command line (typer + rich)."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

import audit  # its names load on first use (audit/__init__.py)
from core.datadir import private_umask, secure_data_dir
from core.errors import SidecarError
from core.logs import configure_logging

if TYPE_CHECKING:
    from core.db import Database
    from core.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help=__doc__)
audit_app = typer.Typer(no_args_is_help=True, help="Audit log: verification for auditors.")
dead_app = typer.Typer(no_args_is_help=True, help="Dead letters: pipeline failures with their reasons.")
app.add_typer(audit_app, name="audit")
app.add_typer(dead_app, name="dead-letters")

# The group-commit thread needs the GIL back quickly after each database call while the
# event loop is busy framing (docs/intake.md, "How the intake commits").
GIL_SWITCH_INTERVAL_S = 0.0005

console = Console()
err_console = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (default ./sidecar-data).")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML settings file (or SIDECAR_CONFIG).")]


@app.callback()
def _private_files() -> None:
    # Before any command creates a file: whatever it writes (databases, their -wal and
    # -shm, journal, objects, converted bundles) is its account's alone.
    private_umask()


# Each command imports what it needs when it runs: `sidecar --help` and `sidecar stats` answer
# without loading SQLAlchemy's ORM, Alembic, Celery or the mapping (tests/test_cli_startup.py).


def _settings(config: Path | None = None, **overrides: object) -> Settings:
    from core.settings import load_settings

    settings = load_settings(config, **overrides)
    configure_logging(settings.log_level, file=settings.log_file)
    return settings


def _database(settings: Settings) -> Database:
    """The database, migrated to the code's schema (a no-op check when it already is)."""
    from core.db import Database

    db = Database(settings)
    db.migrate()
    return db


def _private_data_dir(settings: Settings, *, create: bool = True) -> None:
    """Check (and create, 0700) the data directory before the command opens it; ``create``
    False: only if it exists (a command that needs it only for an embedded database)."""
    secure_data_dir(settings.data_dir, create=create, secrets=[settings.effective_secret_file])


# Credentials an operator may give in the environment. `serve` reads them into its settings
# and then drops them, so that no child it starts later inherits them: above all the model
# zone's process (sandbox.process), which gets only its own database URL (and the model
# server's key) as arguments.
CREDENTIAL_VARIABLES = (
    "SIDECAR_SECRET",
    "SIDECAR_API_TOKENS",
    "SIDECAR_DATABASE_URL",
    "SIDECAR_SANDBOX_DATABASE_URL",
    "SIDECAR_BROKER_URL",
    "SIDECAR_EVENTS_URL",
    "SIDECAR_MODEL_API_KEY",  # reaches the sandbox child in its config (sandbox.llm.ModelConfig)
)


def _forget_credentials_in_environment() -> None:
    for name in CREDENTIAL_VARIABLES:
        os.environ.pop(name, None)


@app.command()
def serve(
    data_dir: DataDir = None,
    mllp_port: Annotated[int | None, typer.Option("--mllp-port", help="MLLP port (default 2575).")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Bind address (default 127.0.0.1).")] = None,
    config: ConfigFile = None,
) -> None:
    """MLLP listener, pipeline and event relay, until SIGTERM/SIGINT; then drain and exit 0."""
    import asyncio

    from sidecar.app import SidecarApp

    settings = _settings(config, data_dir=data_dir, mllp_port=mllp_port, mllp_host=host)
    _forget_credentials_in_environment()
    _private_data_dir(settings)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)

    async def main() -> None:
        sidecar = SidecarApp(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await sidecar.start()
        # What start-up built lives as long as the process: out of the cyclic collector's
        # way, which otherwise rescans it on every collection under load (profiled).
        gc.freeze()
        # A line on stdout that scripts and tests can wait for (the port may be 0 → chosen).
        ports: dict[str, object] = {"mllp_port": sidecar.port}
        ports |= {"api_port": sidecar.api.port} if sidecar.api else {}
        ports |= {"dicom_port": sidecar.dicom.port} if sidecar.dicom else {}
        ports |= {"pipeline_pids": sidecar.pipeline.pids} if sidecar.pipeline else {}
        ports |= {"relay_pids": sidecar.relay_process.pids} if sidecar.relay_process else {}
        print(json.dumps({"event": "listening", **ports}), flush=True)
        await stop.wait()
        await sidecar.stop()

    asyncio.run(main())


@app.command()
def worker(
    config: ConfigFile = None,
    lane: Annotated[
        list[int] | None,
        typer.Option(
            help="Lane(s) to consume (repeatable; default: all). Run one process per lane to scale."
        ),
    ] = None,
    screen: Annotated[
        bool,
        typer.Option(
            "--screen/--no-screen",
            help="Also answer the sandbox's known-identifier screening requests (queue sidecar.screen).",
        ),
    ] = True,
) -> None:
    """Run pipeline tasks from RabbitMQ (needs SIDECAR_BROKER_URL).

    One thread per process: each lane is consumed in order, so a patient's messages (always
    the same lane) are processed in arrival order while lanes run in parallel processes.
    A screening request waits behind at most the one pipeline task in hand.
    """
    from core.tasks import SCREEN_QUEUE, lane_queue
    from worker.tasks import build_worker_app

    settings = _settings(config)
    # The secret file and the de-identified DICOM objects are kept there.
    _private_data_dir(settings)
    lanes = lane if lane else list(range(settings.pipeline_lanes))
    if any(not 0 <= k < settings.pipeline_lanes for k in lanes):
        raise typer.BadParameter(f"lanes are 0..{settings.pipeline_lanes - 1}")
    celery = build_worker_app(settings)
    name = "lanes-" + "-".join(map(str, lanes))
    queues = [lane_queue(k) for k in lanes] + ([SCREEN_QUEUE] if screen else [])
    celery.worker_main(_celery_argv(",".join(queues), 1, name))


@app.command()
def sandbox(
    config: ConfigFile = None,
    concurrency: Annotated[int, typer.Option(help="Summary jobs run at once.")] = 1,
) -> None:
    """Run summary jobs in the model zone (needs SIDECAR_BROKER_URL)."""
    from sidecar.sandbox_process import build_sandbox_app

    # No data directory: the model zone runs (in production, as an account of its own) with
    # no access to what the identified zone keeps there.
    settings = _settings(config)
    celery = build_sandbox_app(settings)
    from core.tasks import SANDBOX_QUEUE

    celery.worker_main(_celery_argv(SANDBOX_QUEUE, concurrency, "sandbox"))


def _celery_argv(queue: str, concurrency: int, name: str) -> list[str]:
    return [
        "worker", "-Q", queue, "--pool", "threads", "-c", str(concurrency), "-n", f"{name}@%h",
        "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


@app.command()
def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep the demo's data here (default: a new temp dir).")
    ] = None,
    patients: Annotated[int, typer.Option(min=1, max=2000, help="Synthetic patients.")] = 30,
) -> None:
    """The whole chain on embedded defaults: a synthetic hospital sends ADT/ORU over MLLP."""
    from sidecar.demo import run_demo

    report = run_demo(data_dir, patients, console)
    if not report.audit_ok or not report.summary:
        raise typer.Exit(1)


@app.command()
def convert(
    paths: Annotated[
        list[Path],
        typer.Argument(help="HL7 v2 files (one message, several, or a batch), DICOM files, or folders."),
    ],
    deid: Annotated[
        bool, typer.Option("--deid", help="De-identify (uses the data directory's secret).")
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write one Bundle file per message here.")] = None,
    report: Annotated[
        bool,
        typer.Option(
            "--report",
            help="List on stderr what no rule mapped (segments, fields) per message, then a breadth "
            "summary per segment and field across all files: mapped, mapped by the IG but not here, no rule.",
        ),
    ] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Convert HL7 v2 or DICOM files to FHIR R4 transaction Bundles (stdout as JSON lines, or --out DIR).

    With --deid, a DICOM file also gives its de-identified copy DIR/<new SOP Instance UID>.dcm.
    """
    from mapping import MappingOptions
    from sidecar.convert import write_outputs
    from worker.options import DicomPipelineOptions

    settings = _settings(config, data_dir=data_dir)
    vault = None
    if deid:
        from deid import Vault
        from worker.context import load_secret

        if settings.secret is None:
            _private_data_dir(settings)
        vault = Vault(load_secret(settings), date_shift_max_days=settings.date_shift_max_days)
    breadth = None
    if report:
        from mapping.breadth import Breadth

        breadth = Breadth()
    failed = write_outputs(
        paths,
        MappingOptions(default_timezone=settings.site_timezone),
        vault,
        out,
        emit=lambda line: print(line, file=sys.stdout),
        report_error=lambda line: print(line, file=sys.stderr),
        report_unmapped=(lambda line: print(f"unmapped: {line}", file=sys.stderr)) if report else None,
        dicom=DicomPipelineOptions(
            authority=settings.dicom_issuer_default, allow_burned_in=settings.dicom_allow_burned_in
        ),
        breadth=breadth,
    )
    for line in breadth.lines() if breadth is not None else ():
        print(line, file=sys.stderr)
    if failed:
        raise typer.Exit(1)


@app.command()
def stats(
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable output (keys in README).")
    ] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Counts: inbox, resources by type, events, jobs, audit entries."""
    from sidecar.stats import collect, collect_from_url

    settings = _settings(config, data_dir=data_dir)
    _private_data_dir(settings, create=settings.database_url is None)
    # A current schema is counted over a bare connection (no ORM to load); otherwise migrate.
    data = collect_from_url(settings.effective_database_url, settings.intake_journal_file)
    if data is None:
        db = _database(settings)
        data = collect(db, settings.intake_journal_file)
        db.dispose()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(title="sidecar stats")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, n in value.items():
                table.add_row(f"{key}.{sub}", str(n))
        else:
            table.add_row(key, str(value))
    console.print(table)


@audit_app.command("checkpoint")
def audit_checkpoint(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Print a signed checkpoint of the audit log (its size and RFC 9162 root) for an auditor
    to keep; `sidecar audit verify --checkpoint FILE` later proves the log still extends it."""
    from audit.checkpoint import ORIGIN, Checkpoint, load_or_create_key, sign
    from audit.merkle import root

    settings = _settings(config, data_dir=data_dir)
    _private_data_dir(settings, create=settings.database_url is None)
    db = _database(settings)
    leaves = audit.leaves(db.engine)
    db.dispose()
    key = load_or_create_key(settings.audit_key_file)
    typer.echo(sign(Checkpoint(ORIGIN, len(leaves), root(leaves)), key), nl=False)


@audit_app.command("verify")
def audit_verify(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="A checkpoint saved earlier: the log must still extend it."),
    ] = None,
) -> None:
    """Check the whole hash chain; report the first broken link (exit 1 if any). With
    --checkpoint, also that the log's first entries are still the ones that checkpoint signed."""
    settings = _settings(config, data_dir=data_dir)
    _private_data_dir(settings, create=settings.database_url is None)
    db = _database(settings)
    report = audit.verify(db.engine)
    pending = audit.pending_count(db.engine)
    if checkpoint is not None:
        failure = _against_checkpoint(db, settings, checkpoint)
        if failure:
            db.dispose()
            err_console.print(f"audit log does NOT extend checkpoint {checkpoint}: {failure}")
            raise typer.Exit(1)
        console.print(f"audit log extends checkpoint {checkpoint}")
    db.dispose()
    if pending:
        # Written with their action, linked by a running listener within moments (or by
        # the next one to start after a crash): not part of the chain verified here yet.
        console.print(f"{pending} entries written but not yet linked into the chain (audit_pending)")
    if report.ok:
        console.print(f"audit chain verified: {report.entries} entries")
        return
    err_console.print(f"audit chain BROKEN at entry {report.first_broken}: {report.reason}")
    raise typer.Exit(1)


def _against_checkpoint(db: Database, settings: Settings, path: Path) -> str | None:
    """Why the log is not an extension of the checkpoint in ``path`` (None: it is), by an
    RFC 9162 consistency proof from the checkpoint's tree to the log's."""
    from audit.checkpoint import CheckpointError, load_or_create_key, parse
    from audit.merkle import Tree, verify_consistency

    key_file = settings.audit_key_file
    if not key_file.exists():
        return f"the signing key {key_file} is missing"
    try:
        saved = parse(path.read_text(encoding="utf-8"), load_or_create_key(key_file).public_key())
    except (OSError, CheckpointError) as exc:
        return str(exc)
    tree = Tree(audit.leaves(db.engine))
    if tree.size < saved.size:
        return f"the log has {tree.size} entries, the checkpoint {saved.size} (entries removed)"
    if not verify_consistency(saved.size, tree.size, saved.root, tree.root, tree.consistency(saved.size)):
        return f"its first {saved.size} entries are not the ones the checkpoint signed (rewritten)"
    return None


@audit_app.command("export")
def audit_export(
    patient: Annotated[
        str | None, typer.Option("--patient", help="Patient/<pseudonym> or the pseudonym: its entries only.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Entries at or after this FHIR date or instant (UTC).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the bundle here (default: stdout).")
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Write an audit bundle for an outside auditor: the entries (of a patient, since a time),
    each with its inclusion proof in a checkpoint signed now, earlier checkpoints with
    consistency proofs, the public key, and a signature over it all. Check it anywhere with
    `python -m audit.verify_bundle BUNDLE`. The export is itself audited."""
    from audit.bundle import export_bundle
    from audit.checkpoint import load_or_create_key
    from core.search_index import date_range
    from sidecar.reid import current_operator

    low = date_range(since) if since else None
    if since and low is None:
        err_console.print(f"--since: {since!r} is not a FHIR date or instant")
        raise typer.Exit(2)
    pseudonym = patient.removeprefix("Patient/") if patient else None
    settings = _settings(config, data_dir=data_dir)
    _private_data_dir(settings, create=settings.database_url is None)
    db = _database(settings)
    try:
        with db.transaction() as session:
            audit.append(
                session,
                actor=f"operator:{current_operator()}",
                action="audit.export",
                entity=f"Patient/{pseudonym}" if pseudonym else "audit_log",
                detail={"since": since} if since else {},
                patients=[pseudonym] if pseudonym else [],
            )
        key = load_or_create_key(settings.audit_key_file)
        since_at = low[0].isoformat(timespec="microseconds") if low else None
        text = export_bundle(db.engine, key, patient=pseudonym, since=since_at)
    finally:
        db.dispose()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"audit bundle written to {out}")


@audit_app.command("archive")
def audit_archive(
    out: Annotated[
        Path, typer.Option("--out", help="The archive bundle to write (keep it: it is the record).")
    ],
    before: Annotated[
        str | None,
        typer.Option(
            "--before", help="Archive entries older than this FHIR date (default: audit_retention_days ago)."
        ),
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Retention: move the oldest entries' content into a signed archive bundle, checked before
    anything is emptied; their hashes stay in the log, so checkpoints and proofs still hold.
    `python -m audit.verify_bundle FILE` checks the archive later. Audited as audit.archived."""
    from datetime import UTC, datetime, timedelta

    from audit.archive import archive
    from audit.checkpoint import load_or_create_key
    from core.search_index import date_range
    from sidecar.reid import current_operator

    settings = _settings(config, data_dir=data_dir)
    bound = date_range(before) if before else None
    if before and bound is None:
        err_console.print(f"--before: {before!r} is not a FHIR date or instant")
        raise typer.Exit(2)
    cutoff = bound[0] if bound else datetime.now(UTC) - timedelta(days=settings.audit_retention_days)
    _private_data_dir(settings, create=settings.database_url is None)
    db = _database(settings)
    try:
        done = archive(
            db.engine,
            load_or_create_key(settings.audit_key_file),
            before=cutoff.isoformat(timespec="microseconds"),
            out=out,
            actor=f"operator:{current_operator()}",
        )
    finally:
        db.dispose()
    if done is None:
        console.print(f"nothing to archive: no entry before {cutoff.isoformat(timespec='seconds')}")
        return
    console.print(f"entries {done.first}-{done.last} archived to {out} (sha256 {done.sha256})")


@audit_app.command("public-key")
def audit_public_key(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Print the public half of the audit signing key (PEM): give it to auditors, who check
    checkpoints and bundles with it (`python -m audit.verify_bundle --key FILE`)."""
    from cryptography.hazmat.primitives import serialization

    from audit.checkpoint import load_or_create_key

    settings = _settings(config, data_dir=data_dir)
    _private_data_dir(settings, create=settings.database_url is None)
    public = load_or_create_key(settings.audit_key_file).public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    typer.echo(pem.decode(), nl=False)


@app.command()
def reid(
    patient: Annotated[str, typer.Argument(help="Patient/<pseudonym> or the pseudonym.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """The identifier a pseudonym was made from: for operators on `reid_operators` only,
    every request (refused ones too) audited with its reason. The operator is the account
    this command runs as (its real uid), whatever LOGNAME or USER say."""
    from sidecar.reid import ReidRefused, current_operator, login_account, reidentify

    settings = _settings(config, data_dir=data_dir)
    _private_data_dir(settings, create=settings.database_url is None)
    db = _database(settings)
    try:
        found = reidentify(
            db,
            patient,
            operator=current_operator(),
            login=login_account(),
            reason=reason,
            operators=settings.reid_operators,
        )
    except ReidRefused as exc:
        err_console.print(str(exc))
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    console.print_json(
        data={
            "patient": f"Patient/{found.pseudonym}",
            "authority": found.authority,
            "identifier": found.identifier,
            "audit_seq": found.audit_seq,
        }
    )


@dead_app.command("list")
def dead_letters_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Unresolved dead letters with stage, code and reason."""
    from sqlalchemy import select

    from core.tables import DeadLetter

    settings = _settings(config, data_dir=data_dir)
    _private_data_dir(settings, create=settings.database_url is None)
    db = _database(settings)
    table = Table(title="dead letters")
    for col in ("id", "inbox", "stage", "code", "reason", "when"):
        table.add_column(col)
    with db.sessions() as s:
        for d in s.execute(
            select(DeadLetter).where(DeadLetter.resolved_at.is_(None)).order_by(DeadLetter.id)
        ).scalars():
            table.add_row(
                str(d.id), str(d.inbox_id or ""), d.stage, d.code, d.reason, d.created_at.isoformat()
            )
    db.dispose()
    console.print(table)


@dead_app.command("show")
def dead_letters_show(letter_id: int, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """One dead letter: stage, code, reason, and what it belongs to."""
    from core.tables import DeadLetter

    settings = _settings(config, data_dir=data_dir)
    _private_data_dir(settings, create=settings.database_url is None)
    db = _database(settings)
    with db.sessions() as s:
        letter = s.get(DeadLetter, letter_id)
        if letter is None:
            err_console.print(f"no dead letter {letter_id}")
            raise typer.Exit(1)
        console.print_json(
            data={
                "id": letter.id,
                "inbox_id": letter.inbox_id,
                "job_id": letter.job_id,
                "stage": letter.stage,
                "code": letter.code,
                "reason": letter.reason,
                "created_at": letter.created_at.isoformat(),
                "resolved_at": letter.resolved_at.isoformat() if letter.resolved_at else None,
            }
        )
    db.dispose()


@dead_app.command("retry")
def dead_letters_retry(
    letter_ids: Annotated[list[int], typer.Argument(help="Dead letter ids (see `dead-letters list`).")],
    process_now: Annotated[
        bool, typer.Option("--process/--queue", help="Process now, or leave it to the running sidecar.")
    ] = True,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Retry after a fix: the message goes through the current pipeline again."""
    from worker.batch import process
    from worker.context import build_context
    from worker.deadletters import reopen

    settings = _settings(config, data_dir=data_dir)
    _private_data_dir(settings)
    ctx = build_context(settings)
    failed = False
    for letter_id in letter_ids:
        letter = reopen(ctx.db, letter_id)
        if letter.inbox_id is None or not process_now:
            console.print(f"dead letter {letter_id}: queued again")
            continue
        outcome = process(ctx, letter.inbox_id).outcome
        console.print(f"dead letter {letter_id}: inbox {letter.inbox_id} {outcome}")
        failed |= outcome != "processed"
    ctx.db.dispose()
    if failed:
        raise typer.Exit(1)


@app.command()
def replay(
    since: Annotated[datetime | None, typer.Option(help="Received at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Received before (ISO 8601).")] = None,
    sender: Annotated[str | None, typer.Option(help="MSH-3, or MSH-3|MSH-4.")] = None,
    message_type: Annotated[str | None, typer.Option("--type", help="ORU^R01, or ORU for all.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show changes; write nothing.")] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Reprocess archived messages through the current mapping and policy; changed
    resources are published as `updated` events, unchanged ones publish nothing."""
    from worker.context import build_context
    from worker.replay import ReplayFilter
    from worker.replay import replay as run_replay

    settings = _settings(config, data_dir=data_dir)
    _private_data_dir(settings)
    ctx = build_context(settings)
    utc = [d if d is None or d.tzinfo else d.replace(tzinfo=UTC) for d in (since, until)]
    report = run_replay(ctx, ReplayFilter(utc[0], utc[1], sender, message_type), dry_run=dry_run)
    ctx.db.dispose()
    verb = "would change" if dry_run else "changed"
    console.print(f"{report.messages} messages replayed, {report.failed} failed to map; {verb}:")
    table = Table()
    table.add_column("resource.change")
    table.add_column("count", justify="right")
    for key, n in sorted(report.changes.items()):
        table.add_row(key, str(n))
    console.print(table)


def main() -> None:
    try:
        app()
    except SidecarError as exc:
        # A user's mistake (settings, secret file...) deserves one clear line, not a traceback.
        err_console.print(f"error: {exc}")
        sys.exit(2)
