"""What the event contract costs the broker: RabbitMQ CPU per persistent, confirmed event.

    .venv/bin/python -m bench.broker [--events N] [--body-bytes B] [--amqp URL]

The event contract (docs/events.md) is one CloudEvent per resource version, persistent, with
publisher confirms. An ORU^R01 with 10 OBX gives 11-12 of them (10 Observations, the report, the
patient when it changed). This bench publishes `--events` such events through the
product's own publisher (`worker.publishers.RabbitPublisher`, batches of 2,000 as the relay
sends them) into a durable queue of a fresh virtual host, then consumes them, and reads the
broker's CPU time from /proc (the `beam.smp` process, so RabbitMQ must run on this machine).

It reports the broker's CPU milliseconds per event (publish and consume) and what they
bound: the messages per second that would use every core of this machine for the broker
alone. It is a component bench: it bounds the production mode's end-to-end rate from
above; it is not the product's speed (that is `make bench-e2e`).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from pathlib import Path

import pika

from worker.publishers import OutgoingEvent, RabbitPublisher

_CLOCK = os.sysconf("SC_CLK_TCK")
_BATCH = 2000


def _beam_pid() -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "beam.smp":
                    return int(entry.name)
            except OSError:
                continue
    raise SystemExit("no beam.smp process on this machine: run RabbitMQ here")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK  # utime, stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--body-bytes", type=int, default=3_300, help="an Observation event's size")
    parser.add_argument("--events-per-message", type=float, default=11.0)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    args = parser.parse_args()

    beam = _beam_pid()
    exchange, queue = f"bench.broker.{uuid.uuid4().hex[:8]}", f"bench-broker-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(args.amqp))
    channel = conn.channel()
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, exchange, "fhir.#")
    body = b"x" * args.body_bytes
    publisher = RabbitPublisher(args.amqp, exchange)
    try:
        cpu0, t0 = _cpu_s(beam), time.perf_counter()
        for start in range(0, args.events, _BATCH):
            count = min(_BATCH, args.events - start)
            publisher.publish(
                [OutgoingEvent(f"e{start + i}", "fhir.Observation.created", body) for i in range(count)]
            )
        publish_wall, publish_cpu = time.perf_counter() - t0, _cpu_s(beam) - cpu0
        cpu0, t0, seen = _cpu_s(beam), time.perf_counter(), 0
        for method, _props, _body in channel.consume(queue, auto_ack=True, inactivity_timeout=1.0):
            if method is None:
                break
            seen += 1
        consume_wall, consume_cpu = time.perf_counter() - t0 - 1.0, _cpu_s(beam) - cpu0
    finally:
        publisher.close()
        channel.queue_delete(queue)
        channel.exchange_delete(exchange)
        conn.close()

    per_event = (publish_cpu + consume_cpu) / args.events * 1000
    cores = os.cpu_count() or 1
    print(f"broker: {args.events:,} persistent events of {args.body_bytes:,} bytes, confirms, one channel")
    for name, rate, cpu in (
        ("publish", args.events / publish_wall, publish_cpu),
        ("consume", seen / max(consume_wall, 1e-9), consume_cpu),
    ):
        print(f"  {name}  {rate:9,.0f} events/s   broker CPU {cpu / args.events * 1000:.3f} ms/event")
    per_message = per_event * args.events_per_message
    print(
        f"  at {args.events_per_message:g} events per message: {per_message:.2f} ms of broker CPU"
        f" per message; all {cores} cores for the broker alone = {cores * 1000 / per_message:,.0f} msg/s"
    )


if __name__ == "__main__":
    main()
