"""`finmesh up --events rabbitmq`: the local mesh with its events on the machine's RabbitMQ, in its own vhost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from finmesh.cli.broker import local_vhost
from finmesh.cli.mesh import load_fakes
from finmesh.cli.slice import run_slice
from finmesh.cli.traces import load_spans
from tests.e2e.finmesh_up import FinmeshUp
from tests.rabbitmq import _answers

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.timeout(150)]


def test_up_with_rabbitmq_carries_the_demo_events_and_cleans_its_vhost(tmp_path: Path) -> None:
    """The demo's payment reaches notify through the broker (its receipt is there), the trace shows payments'
    publish and notify's process of that message, and Ctrl-C leaves no vhost behind once nothing waits in it."""
    if not _answers():
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    data_dir = tmp_path / "mesh"
    up = FinmeshUp(data_dir, "--events", "rabbitmq")
    try:
        line = up.expect(r"^events over RabbitMQ at 127\.0\.0\.1:5672, vhost (\S+)", 30)
        assert line[1] == local_vhost(str(data_dir))
        up.wait_ready(90)
        demo = asyncio.run(run_slice(up.targets(), load_fakes(data_dir)["sms"], top_up=10_000, pay=2_500))
        assert demo.payee_receipts == 1
        time.sleep(0.6)  # the services' span processors export every 200 ms
        assert up.interrupt() == 0
    finally:
        up.close()
    assert any(f"deleted vhost {local_vhost(str(data_dir))}" in line for line in up.output), up.output[-5:]
    spans = [s for s in load_spans(data_dir / "spans") if s["trace_id"] == demo.trace_id]
    by_id = {s["span_id"]: s for s in spans}
    process = next(s for s in spans if s["name"] == "process finmesh.payments.events" and s["service"] == "notify")
    publish = by_id[process["parent_span_id"]]
    assert (publish["service"], publish["kind"], publish["name"]) == (
        "payments",
        "PRODUCER",
        "publish finmesh.payments.events",
    )
    assert process["kind"] == "CONSUMER"
