"""The RabbitMQ transport's names and settings: pure, no broker needed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from finmesh.platform.config import ServiceSettings
from finmesh.platform.messaging.rabbitmq.topology import Broker, queue_arguments, redacted, with_vhost


def test_an_aggregate_always_takes_the_same_partition_and_the_partitions_are_all_used() -> None:
    broker = Broker(url="amqp://h/", partitions=4)
    assert {broker.routing_key("account-7", "payments.payment.captured.v1") for _ in range(3)} == {
        f"{broker.partition('account-7')}.payments.payment.captured.v1"
    }
    assert {broker.partition(f"account-{i}") for i in range(200)} == {0, 1, 2, 3}
    assert Broker(url="amqp://h/").routing_key("any", "t.v1") == "0.t.v1"


def test_names_per_producer_and_consumer() -> None:
    broker = Broker(url="amqp://h/", prefix="fm")
    assert broker.exchange("payments") == "fm.payments.events"
    assert (broker.queue("notify", 2), broker.dead_letter_exchange("notify"), broker.dead_letter_queue("notify")) == (
        "fm.notify.2",
        "fm.notify.dlx",
        "fm.notify.dead",
    )
    arguments = queue_arguments(broker, "notify")
    assert arguments["x-queue-type"] == "quorum" and arguments["x-single-active-consumer"] is True
    assert arguments["x-dead-letter-exchange"] == "fm.notify.dlx" and arguments["x-delivery-limit"] == 5


def test_the_vhost_setting_replaces_the_urls_and_logs_never_show_credentials() -> None:
    url = with_vhost("amqp://app:s3cret@broker.example:5672/prod", "mesh-a")
    assert url.startswith("amqp://app:s3cret@broker.example:5672/mesh-a?") and "heartbeat=10" in url
    assert with_vhost("amqp://u:p@h:5672/v?heartbeat=30", "") == "amqp://u:p@h:5672/v?heartbeat=30"
    shown = redacted(url)
    assert "s3cret" not in shown and "app" not in shown
    assert shown == "amqp://broker.example:5672 vhost mesh-a"


def test_the_rabbitmq_transport_needs_a_broker_url_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FINMESH_RABBITMQ_URL", raising=False)
    assert ServiceSettings().events_transport == "grpc"  # the default needs no broker
    with pytest.raises(ValidationError, match="FINMESH_RABBITMQ_URL"):
        ServiceSettings(events_transport="rabbitmq")
    settings = ServiceSettings(events_transport="rabbitmq", rabbitmq_url="amqp://u:pw@h/", rabbitmq_vhost="v")
    assert "pw" not in repr(settings)  # a SecretStr
    assert Broker.from_settings(settings).url.startswith("amqp://u:pw@h/v")
