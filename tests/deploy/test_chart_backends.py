"""The chart's shared backends: Redis for the rate limiter's buckets, RabbitMQ for events, and egress to them.

Settings reach the ConfigMap under the names the services read; credentials only by Secret reference; the
egress policy opens exactly DNS, the callees, Redis, the broker and extraTo. Invalid combinations (redis
without an address, a password inline in redis.url, rabbitmq without its Secret) are refused by the schema:
tests/deploy/values/invalid/{redis,rabbitmq,events}-*.yaml.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.test_helm_chart import EXPECTED_CALLERS, SERVICES, _container, base_name, env_of, objects

BACKEND_SECRET_ENV = {"FINMESH_REDIS_URL", "FINMESH_REDIS_PASSWORD", "FINMESH_EVENTS_RABBITMQ_URL"}


def _deployments(docs: tuple[dict[str, Any], ...], name: str) -> list[dict[str, Any]]:
    return [objects(docs, "Deployment")[f"{base_name(name)}-{color}"] for color in ("blue", "green")]


def test_defaults_need_no_redis_and_no_broker(helm: Any) -> None:
    docs = helm.render("default")
    for name in SERVICES:
        data = objects(docs, "ConfigMap")[f"{base_name(name)}-config"]["data"]
        assert (data["FINMESH_RATE_LIMIT_BACKEND"], data["FINMESH_EVENTS_TRANSPORT"]) == ("local", "grpc")
        assert not [key for key in data if key.startswith(("FINMESH_REDIS_", "FINMESH_EVENTS_RABBITMQ_"))]
        for deployment in _deployments(docs, name):
            assert not BACKEND_SECRET_ENV & set(env_of(_container(deployment)))
    assert not [p for p in objects(docs, "NetworkPolicy") if p.endswith("-egress")]


def test_redis_and_broker_settings_with_credentials_from_secrets(helm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from finmesh.platform.config import ServiceSettings

    docs = helm.render("shared-backends")
    for name in SERVICES:
        data = objects(docs, "ConfigMap")[f"{base_name(name)}-config"]["data"]
        assert data["FINMESH_RATE_LIMIT_BACKEND"] == "redis"
        assert data["FINMESH_REDIS_URL"] == "rediss://redis-master.cache.svc.cluster.local:6380/0"
        assert data["FINMESH_REDIS_KEY_PREFIX"] == "prod:ratelimit:"
        assert data["FINMESH_EVENTS_TRANSPORT"] == "rabbitmq"
        assert data["FINMESH_EVENTS_RABBITMQ_VHOST"] == "finmesh"
        assert data["FINMESH_EVENTS_RABBITMQ_EXCHANGE_PREFIX"] == "finmesh.events"
        assert "FINMESH_EVENTS_RABBITMQ_URL" not in data and "FINMESH_REDIS_PASSWORD" not in data
        for deployment in _deployments(docs, name):
            env = env_of(_container(deployment))
            assert env["FINMESH_REDIS_PASSWORD"] == {"secretKeyRef": {"name": "finmesh-redis", "key": "password"}}
            assert env["FINMESH_EVENTS_RABBITMQ_URL"] == {
                "secretKeyRef": {"name": "finmesh-rabbitmq", "key": "amqp-url"}
            }
            assert "FINMESH_REDIS_URL" not in env  # the plain URL comes from the ConfigMap
        # The services read these names (a misspelt one would leave the limiter local, silently).
        with monkeypatch.context() as patch:
            for key, value in data.items():
                if key.startswith("FINMESH_"):
                    patch.setenv(key, value)
            patch.setenv("FINMESH_REDIS_PASSWORD", "from-the-secret")
            settings = ServiceSettings()
        assert settings.rate_limit_backend == "redis"
        assert settings.redis_url.get_secret_value().startswith("rediss://")
        assert (settings.redis_timeout_seconds, settings.redis_key_prefix) == (0.01, "prod:ratelimit:")


def test_redis_url_may_come_whole_from_the_secret(helm: Any) -> None:
    docs = helm.render(
        "default",
        "--set",
        "overload.backend=redis",
        "--set",
        "redis.existingSecret=finmesh-redis",
        "--set",
        "redis.urlKey=url",
        "--set",
        "redis.passwordKey=",
    )
    data = objects(docs, "ConfigMap")[f"{base_name('payments')}-config"]["data"]
    assert "FINMESH_REDIS_URL" not in data
    env = env_of(_container(_deployments(docs, "payments")[0]))
    assert env["FINMESH_REDIS_URL"] == {"secretKeyRef": {"name": "finmesh-redis", "key": "url"}}
    assert "FINMESH_REDIS_PASSWORD" not in env


def test_egress_reaches_dns_callees_redis_broker_and_extras_only(helm: Any) -> None:
    policies = objects(helm.render("shared-backends"), "NetworkPolicy")
    for name in SERVICES:
        policy = policies[f"{base_name(name)}-egress"]["spec"]
        assert policy["policyTypes"] == ["Egress"]
        assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "server"
        dns, callees, redis, broker, database = policy["egress"]
        assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
        assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
        called = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in callees["to"]}
        assert called == {callee for callee, callers in EXPECTED_CALLERS.items() if name in callers}
        assert callees["ports"] == [{"port": 50051, "protocol": "TCP"}]
        assert redis == {
            "ports": [{"port": 6380, "protocol": "TCP"}],
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "cache"}}}],
        }
        assert broker == {"ports": [{"port": 5671, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}
        assert database["ports"] == [{"port": 5432, "protocol": "TCP"}]


def test_egress_opens_no_backend_that_is_not_used(helm: Any) -> None:
    """Egress on with the local limiter and gRPC events: no rule for Redis' or the broker's port."""
    policies = objects(helm.render("default", "--set", "networkPolicy.egress.enabled=true"), "NetworkPolicy")
    for name in SERVICES:
        rules = policies[f"{base_name(name)}-egress"]["spec"]["egress"]
        ports = {port["port"] for rule in rules for port in rule["ports"]}
        assert ports == {53, 50051}, name
