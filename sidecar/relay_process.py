"""The relay in a process of its own under `sidecar serve`.

What the relay does each round (take what the model zone handed back, then publish the
outbox: read the rows, screen what the pipeline did not, mark them sent, audit it) is
database and JSON work that held the GIL of the process the listener runs in: with a
backlog, a sender waiting for each ACK got half the round trips it got from the listener
alone (docs/benchmarks.md). In a child process (core.children), at the pipeline's lower
priority, the listener keeps its interpreter to itself.

`serve` runs it here unless it was given an in-process bus to deliver to (the demo and the
in-process tests subscribe to one): those subscribers live in `serve`'s process, so their
relay stays a thread there. Events go to ``events_url`` when set, as before; else nowhere
but the outbox, which FHIR subscriptions read (a row is released to them when it is marked
sent).
"""

from __future__ import annotations

import multiprocessing.connection
import time
from collections.abc import Callable

from core.children import ChildLink, Children
from core.settings import Settings
from sidecar.loops import Loop
from sidecar.outputs import OutputIntake
from worker.leakguard import LeakGuard
from worker.pipeline import PipelineContext
from worker.publishers import LocalBus, Publisher, RabbitPublisher
from worker.relay import Relay

__all__ = [
    "build_outputs",
    "build_relay",
    "events_publisher",
    "relay_process",
    "relay_round",
    "run_relay_child",
]

# A stop publishes what is left for up to this long (under core.children's 30 s stop
# limit); anything later stays unsent in the outbox for the next start.
DRAIN_S = 20.0
WAKE_EVERY_S = 0.005


def events_publisher(settings: Settings, bus: LocalBus) -> Publisher:
    """RabbitMQ when ``events_url`` is set, else ``bus`` (in-process subscribers, if any)."""
    events_url = settings.effective_events_url
    return RabbitPublisher(events_url, settings.events_exchange) if events_url else bus


def build_relay(settings: Settings, ctx: PipelineContext, publisher: Publisher) -> Relay:
    return Relay(ctx.db, publisher, batch_size=settings.relay_batch_size, guard=LeakGuard(ctx.vault))


def build_outputs(settings: Settings, ctx: PipelineContext) -> OutputIntake:
    """What the model zone hands back, checked and stored in the identified zone."""
    return OutputIntake(
        ctx.db,
        LeakGuard(ctx.vault),
        model_version=settings.model_version,
        model_weights_digest=settings.model_weights_digest,
    )


def relay_round(outputs: OutputIntake, relay: Relay) -> Callable[[], int]:
    """One round, in a process of its own or a thread of serve's: take what the model zone
    handed back (its summaries' events go into the outbox), then publish the outbox."""
    return lambda: outputs.run_once() + relay.run_once()


def run_relay_child(conn: multiprocessing.connection.Connection, parent: int, settings: Settings) -> None:
    """Relay rounds until told to stop (then what is left, for up to DRAIN_S) or the parent
    is gone (the rows stay in the outbox; the next start publishes them)."""
    from core.logs import configure_logging
    from worker.context import build_context

    configure_logging(settings.log_level, file=settings.log_file)
    link = ChildLink(conn, parent, nice=settings.pipeline_nice)
    ctx = build_context(settings)
    publisher = events_publisher(settings, LocalBus())
    relay = build_relay(settings, ctx, publisher)
    outputs = build_outputs(settings, ctx)
    loop = Loop(
        "relay",
        relay_round(outputs, relay),
        settings.relay_interval_s,
        wake=link.wake,
        stop=link.stop,
    )
    link.ready()
    try:
        loop.run()
        deadline = time.monotonic() + DRAIN_S
        while not link.parent_gone.is_set() and time.monotonic() < deadline and loop.run_round():
            pass
    finally:
        publisher.close()
        ctx.db.dispose()
        link.stopped()


def relay_process(settings: Settings) -> Children:
    return Children(
        run_relay_child, name="sidecar-relay", args_for=lambda _index: (settings,), wake_every_s=WAKE_EVERY_S
    )
