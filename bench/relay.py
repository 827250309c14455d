"""Event publishing: the relay's publisher (asynchronous confirms) beside pika's blocking
channel with a confirm per message (the baseline), same broker, same run.

    .venv/bin/python -m bench.relay [--events N] [--url amqp://guest:guest@127.0.0.1:5672//]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import pika

from worker.publishers import OutgoingEvent, RabbitPublisher, pika_parameters


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672//")
    args = parser.parse_args()
    exchange = f"bench.events.{uuid.uuid4().hex[:6]}"
    events = [
        OutgoingEvent(f"e{i}", "fhir.Observation.created", json.dumps({"i": i, "pad": "x" * 600}).encode())
        for i in range(args.events)
    ]
    conn = pika.BlockingConnection(pika_parameters(args.url))
    channel = conn.channel()
    channel.exchange_declare(exchange, exchange_type="topic", durable=True, auto_delete=False)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange, "#")

    publisher = RabbitPublisher(args.url, exchange)
    start = time.perf_counter()
    for i in range(0, len(events), 500):  # the relay's batch size
        publisher.publish(events[i : i + 500])
    ours = len(events) / (time.perf_counter() - start)
    publisher.close()

    baseline_n = min(len(events), 3000)
    blocking = pika.BlockingConnection(pika_parameters(args.url))
    confirm_channel = blocking.channel()
    confirm_channel.confirm_delivery()
    start = time.perf_counter()
    for e in events[:baseline_n]:
        confirm_channel.basic_publish(
            exchange, e.routing_key, e.body, pika.BasicProperties(delivery_mode=2, message_id=e.event_id)
        )
    baseline = baseline_n / (time.perf_counter() - start)
    blocking.close()

    delivered = channel.queue_declare(queue, passive=True).method.message_count
    channel.exchange_delete(exchange)
    conn.close()
    print(f"relay publisher (async confirms): {ours:8.0f} msg/s")
    print(f"baseline, confirm per message  : {baseline:8.0f} msg/s")
    print(f"ratio                          : {ours / baseline:8.1f}x   ({delivered} messages routed)")


if __name__ == "__main__":
    main()
