"""The chart exposes identity's JWKS: FINMESH_JWKS_PORT, the container and Service port "jwks", a NetworkPolicy
for that port alone; nothing of it on the other services, and none of it with jwks.enabled=false."""

from __future__ import annotations

import json
from typing import Any

import pytest

# Fixtures (helm, chart_values) and the `value_set` parametrization live in conftest.py.

FULLNAME = "fm-finmesh"
JWKS_PORT = 8080
SERVICES = ("identity", "payments", "risk", "notify")


def objects(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def test_identity_serves_the_jwks_on_a_named_port_its_services_expose(
    helm: Any, value_set: str, chart_values: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Identity's settings read the port (a misspelt variable would leave 0: a random port), both colors open
    "jwks", the active and preview Services route it; the other services get none of it."""
    from finmesh.identity.config import IdentitySettings

    docs = helm.render(value_set)
    configmaps, deployments, services = (objects(docs, k) for k in ("ConfigMap", "Deployment", "Service"))
    for name in (n for n in SERVICES if chart_values(value_set)["services"][n]["enabled"]):
        base = f"{FULLNAME}-{name}"
        data = configmaps[f"{base}-config"]["data"]
        port = {"name": "jwks", "containerPort": JWKS_PORT, "protocol": "TCP"}
        service_port = {
            "name": "jwks",
            "port": JWKS_PORT,
            "targetPort": "jwks",
            "protocol": "TCP",
            "appProtocol": "http",
        }
        exposed = [s for s in (services[base], services.get(f"{base}-preview")) if s is not None]
        if name == "identity":
            with monkeypatch.context() as env:
                for key, value in data.items():
                    env.setenv(key, value)
                # What the pod gets from Secrets, not the ConfigMap (the shared-backends values name a broker).
                env.setenv("FINMESH_RABBITMQ_URL", "amqp://finmesh:from-the-secret@broker/")
                assert IdentitySettings().jwks_port == JWKS_PORT
            for color in ("blue", "green"):
                (container,) = deployments[f"{base}-{color}"]["spec"]["template"]["spec"]["containers"]
                assert port in container["ports"]
            assert all(service_port in s["spec"]["ports"] for s in exposed)
        else:
            assert "FINMESH_JWKS_PORT" not in data
            for color in ("blue", "green"):
                (container,) = deployments[f"{base}-{color}"]["spec"]["template"]["spec"]["containers"]
                assert "jwks" not in [p["name"] for p in container["ports"]]
            assert not [p for s in exposed for p in s["spec"]["ports"] if p["name"] == "jwks"]


def test_network_policy_admits_the_jwks_port_from_its_peers(helm: Any) -> None:
    """Its own policy on identity's pods, the JWKS port alone: from anywhere by default (the keys are public),
    from jwks.networkPolicy.from when listed."""
    gateway = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}}}
    for args, peers in (((), None), (("--set-json", f"jwks.networkPolicy.from=[{json.dumps(gateway)}]"), [gateway])):
        policy = objects(helm.render("default", *args), "NetworkPolicy")[f"{FULLNAME}-identity-jwks"]["spec"]
        assert policy["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "identity",
            "app.kubernetes.io/instance": "fm",
            "app.kubernetes.io/component": "server",
        }
        expected: dict[str, Any] = {"ports": [{"port": JWKS_PORT, "protocol": "TCP"}]}
        if peers is not None:
            expected["from"] = peers
        assert policy["ingress"] == [expected] and policy["policyTypes"] == ["Ingress"]


def test_jwks_off_serves_none(helm: Any) -> None:
    """jwks.enabled=false: FINMESH_JWKS_PORT=-1 (no listener), no jwks port anywhere, no policy for it."""
    docs = helm.render("default", "--set", "jwks.enabled=false")
    assert objects(docs, "ConfigMap")[f"{FULLNAME}-identity-config"]["data"]["FINMESH_JWKS_PORT"] == "-1"
    assert f"{FULLNAME}-identity-jwks" not in objects(docs, "NetworkPolicy")
    for service in objects(docs, "Service").values():
        assert "jwks" not in [p["name"] for p in service["spec"]["ports"]]
    for deployment in objects(docs, "Deployment").values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert "jwks" not in [p["name"] for p in container["ports"]]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["jwks.port=50051"], "jwks.port (50051) must differ from grpc.port"),
        (["jwks.port=9464"], "jwks.port (9464) must differ from metrics.port"),
        (["jwks.path=/keys"], "jwks: Additional property path is not allowed"),
    ],
    ids=["grpc-port-clash", "metrics-port-clash", "unknown-key"],
)
def test_invalid_jwks_values_are_rejected(helm: Any, settings: list[str], message: str) -> None:
    result = helm.template(*[arg for setting in settings for arg in ("--set", setting)])
    assert result.returncode != 0 and message in result.output, result.output
