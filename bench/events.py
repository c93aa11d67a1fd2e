"""Events through each transport in the same run: the gRPC relay (DeliverEvents) against RabbitMQ.

    python -m bench.events [--events 3000] [--rounds 3] [--seconds 5] [--concurrency 32] [--skip-mesh]

a) events per second, outbox to notify's commit: a producer outbox (SQLite file) filled with `--events`
   events over 300 aggregates, drained by the platform's OutboxRelay through each transport into one notify
   process that takes both (DeliverEvents, and its broker consumer on a vhost of the run's own); the clock runs
   from the relay's start until notify has recorded every event. Rounds alternate between the transports.
b) end-to-end payments per second (closed loop, like bench.mesh) on a mesh per transport, each beside the no-op
   chain of the same hops measured in the same run, and the two transports' ratio.

Notify's events here are of a type that drafts no notification: the figure is the transport and notify's
dedupe and commit. Needs the RabbitMQ on 127.0.0.1:5672 (FINMESH_RABBITMQ_URL) and rabbitmqctl or the
management API for the vhost; says so and skips otherwise. Never passes or fails on a time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from sqlalchemy import MetaData, text

from bench.mesh import BASE_ENV, Payer, RealMesh, Target, closed_round, load_average, noop_pids, settle
from finmesh.cli.broker import BrokerAdminError, amqp_url, create_vhost, delete_vhost
from finmesh.cli.mesh import Mesh, free_port, is_serving
from finmesh.load.noop import NoopMesh
from finmesh.platform.messaging.event_sink import NotifyEventSink
from finmesh.platform.messaging.outbox import enqueue, outbox_table
from finmesh.platform.messaging.rabbitmq.publisher import RabbitEventSink
from finmesh.platform.messaging.rabbitmq.topology import Broker, declare_consumer, with_vhost
from finmesh.platform.messaging.relay import OutboxRelay, RelayPolicy
from finmesh.platform.storage.db import create_engine, create_schema

AGGREGATES = 300


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def _fill(url: str, run: str, count: int) -> None:
    engine = create_engine(url)
    table = outbox_table(MetaData())
    await create_schema(engine, table.metadata)
    async with engine.begin() as conn:
        for i in range(count):
            await enqueue(
                conn,
                table,
                event_type="bench.event.happened.v1",
                aggregate_id=f"{run}-{i % AGGREGATES}",
                payload={"i": i, "amount_minor_units": 10**12 + i},
            )
    await engine.dispose()


async def _received(notify_url: str, run: str) -> int:
    engine = create_engine(notify_url)
    try:
        async with engine.connect() as conn:
            found = await conn.scalar(
                text("SELECT COUNT(*) FROM received_events WHERE aggregate_id LIKE :run"), {"run": f"{run}-%"}
            )
    finally:
        await engine.dispose()
    return int(found or 0)


async def one_drain(
    transport: str, tmp: Path, notify_target: str, notify_url: str, broker: Broker, count: int
) -> float:
    """Events per second from a full outbox to notify's commit through `transport`."""
    run = uuid.uuid4().hex[:8]
    url = f"sqlite+aiosqlite:///{tmp / ('outbox-' + run + '.db')}"
    await _fill(url, run, count)
    engine = create_engine(url)
    channel = grpc.aio.insecure_channel(notify_target)
    sink = RabbitEventSink(broker, "bench") if transport == "rabbitmq" else NotifyEventSink(channel)
    relay = OutboxRelay(
        engine,
        outbox_table(MetaData()),
        "bench",
        sink.deliver,
        RelayPolicy(metrics_sample_seconds=0),
        consumer=sink.name,
    )
    started = time.monotonic()
    relay.start()
    try:
        while await _received(notify_url, run) < count:
            if time.monotonic() - started > 120:
                raise TimeoutError(f"{transport}: notify did not receive {count} events in 120 s")
            await asyncio.sleep(0.05)
        seconds = time.monotonic() - started
    finally:
        await relay.stop()
        await sink.close()
        await channel.close()
        await engine.dispose()
    return count / seconds


async def events_phase(args: argparse.Namespace, vhost_url: str) -> None:
    print(f"\n== a) events per second, outbox -> notify's commit ({args.events} events, {AGGREGATES} aggregates)")
    with tempfile.TemporaryDirectory(prefix="finmesh-bench-events-") as tmp_name:
        tmp = Path(tmp_name)
        notify_url = f"sqlite+aiosqlite:///{tmp / 'notify.db'}"
        mesh = Mesh(tmp / "notify", database_urls={"notify": notify_url}, with_fakes=False)
        # One notify takes both transports; auth off for this bench alone (the relay here has no service token,
        # and both transports then do the same work per event).
        mesh.extra_env.update(
            {
                **BASE_ENV,
                "FINMESH_AUTH_MODE": "off",
                "FINMESH_EVENTS_TRANSPORT": "rabbitmq",
                "FINMESH_RABBITMQ_URL": vhost_url,
                "FINMESH_EVENTS_EXCHANGE_PREFIX": "finmesh",
            }
        )
        mesh.log_dir.mkdir(parents=True, exist_ok=True)
        mesh.span_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        mesh.start_one("notify", port, {})
        target = f"127.0.0.1:{port}"
        try:
            while not is_serving(target):
                await asyncio.sleep(0.1)
            broker = Broker(url=vhost_url)
            await _declare_notify(broker)
            rates: dict[str, list[float]] = {"grpc": [], "rabbitmq": []}
            for i in range(args.rounds):
                for transport in ("grpc", "rabbitmq") if i % 2 == 0 else ("rabbitmq", "grpc"):
                    await settle()
                    rate = await one_drain(transport, tmp, target, notify_url, broker, args.events)
                    rates[transport].append(rate)
                    print(f"  round {i + 1} {transport:<8} {rate:8.0f} events/s", flush=True)
        finally:
            await asyncio.to_thread(mesh.stop)
    grpc_rate, rabbit_rate = med(rates["grpc"]), med(rates["rabbitmq"])
    print(f"  median: gRPC relay {grpc_rate:.0f} events/s, RabbitMQ {rabbit_rate:.0f} events/s")
    print(f"  ratio RabbitMQ / gRPC relay: {rabbit_rate / grpc_rate:.2f}")


async def _declare_notify(broker: Broker) -> None:
    """Notify's queue bound to the bench producer's exchange (notify binds the mesh's three producers)."""
    connection = await broker.connect()
    async with connection:
        await declare_consumer(await connection.channel(), broker, "notify", [("bench", "#")])


async def mesh_phase(args: argparse.Namespace, vhost: str) -> None:
    print(f"\n== b) payments per second end to end, closed loop ({args.concurrency} in flight, {args.seconds:g} s)")
    rabbit_env = {
        "FINMESH_EVENTS_TRANSPORT": "rabbitmq",
        "FINMESH_RABBITMQ_URL": amqp_url(),
        "FINMESH_RABBITMQ_VHOST": vhost,
    }
    meshes = {
        "gRPC relay": RealMesh("events-grpc", True, "sqlite"),
        "RabbitMQ": RealMesh("events-rabbitmq", True, "sqlite", extra_env=rabbit_env),
    }
    noop = NoopMesh(tracing=True, extra_env=BASE_ENV)
    try:
        await asyncio.gather(*(m.start(args.payers) for m in meshes.values()))
        await noop.__aenter__()
        targets = {name: Target(name, m.target, m.payers, m.pids) for name, m in meshes.items()}
        targets["no-op chain"] = Target(
            "no-op chain", noop.target, [Payer("a", "b", noop.metadata())], lambda: noop_pids(noop)
        )
        rates: dict[str, list[float]] = {name: [] for name in targets}
        names = list(targets)
        for i in range(args.rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                await settle()
                result = await closed_round(targets[name], args.concurrency, args.seconds, 1.0)
                rates[name].append(result.throughput)
                print(f"  round {i + 1} {name:<11} {result.throughput:7.0f} payments/s", flush=True)
    finally:
        for m in meshes.values():
            await m.stop()
        await noop.__aexit__(None, None, None)
    base = med(rates["no-op chain"])
    print(f"  no-op chain (same hops): {base:.0f}/s")
    for name in meshes:
        print(f"  {name:<11} {med(rates[name]):6.0f} payments/s = {med(rates[name]) / base:.2f} of the no-op chain")
    print(f"  ratio RabbitMQ / gRPC relay: {med(rates['RabbitMQ']) / med(rates['gRPC relay']):.2f}")


async def measure(args: argparse.Namespace) -> None:
    print(f"load average at start: {load_average()}")
    vhost = f"finmesh-bench-{uuid.uuid4().hex[:8]}"
    try:
        await asyncio.to_thread(create_vhost, vhost)
    except (BrokerAdminError, OSError) as error:
        print(f"skipped: no vhost on RabbitMQ ({error})")
        return
    try:
        await events_phase(args, with_vhost(amqp_url(), vhost))
        if not args.skip_mesh:
            await mesh_phase(args, vhost)
    finally:
        await asyncio.to_thread(delete_vhost, vhost)
        print(f"\nload average at end: {load_average()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--payers", type=int, default=4)
    parser.add_argument("--skip-mesh", action="store_true", help="only a): events per second")
    asyncio.run(measure(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
