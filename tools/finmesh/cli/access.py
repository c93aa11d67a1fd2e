"""Who may call what: the role table (finmesh.platform.auth.roles) joined with each RPC's declared permission.

`python -m finmesh.cli.access > docs/ACCESS.md` writes the table compliance officers and reviewers read;
tests/unit/test_access_doc.py fails when the file and the code disagree, so the docs cannot drift from the
role table again (a README once promised customers a call the table did not grant them).
"""

from __future__ import annotations

from typing import Any

from finmesh.common.v1 import event_intake_pb2
from finmesh.identity.v1 import identity_service_pb2
from finmesh.notify.v1 import notify_service_pb2
from finmesh.payments.v1 import payments_service_pb2
from finmesh.platform.auth.access import access_policy
from finmesh.platform.auth.roles import ALL_ROLES, OWNED_FIELDS, ROLE_PERMISSIONS, SERVICE, VERIFIED_ONLY
from finmesh.risk.v1 import risk_service_pb2

SERVICES: dict[str, Any] = {
    "identity": identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"],
    "payments": payments_service_pb2.DESCRIPTOR.services_by_name["PaymentsService"],
    "risk": risk_service_pb2.DESCRIPTOR.services_by_name["RiskService"],
    "notify": notify_service_pb2.DESCRIPTOR.services_by_name["NotifyService"],
    # The one intake contract every event consumer but notify serves (risk today).
    "event intake (risk)": event_intake_pb2.DESCRIPTOR.services_by_name["EventIntakeService"],
}


def roles_granted(method: Any) -> list[str]:
    """The roles whose tokens get past authorization for `method` (the servicer may still check ownership)."""
    policy = access_policy(method)
    if policy is None or policy.allow_unauthenticated:
        return ["anyone"]
    return [
        role
        for role in ALL_ROLES
        if policy.permission in ROLE_PERMISSIONS[role] and (not policy.internal_only or role == SERVICE)
    ]


def markdown() -> str:
    lines = [
        "# Access: who may call what",
        "",
        "Generated from the role table (`libs/platform/finmesh/platform/auth/roles.py`) and each RPC's",
        "`finmesh.common.v1.access` option by `python -m finmesh.cli.access > docs/ACCESS.md`; a test fails",
        "when this file and the code disagree. Customers (personal, enterprise, institution) act only for",
        "themselves: *own* marks RPCs where a customer may only name their own user, and every RPC naming an",
        "account or payment is checked against its owner by the owning service. *verified* marks money",
        "movement, which needs all three onboarding checks.",
        "",
    ]
    for service, descriptor in SERVICES.items():
        lines += [f"## {service}", "", "| RPC | permission | roles | notes |", "|---|---|---|---|"]
        for method in descriptor.methods:
            policy = access_policy(method)
            permission = policy.permission if policy is not None else ""
            notes = []
            if f"/{descriptor.full_name}/{method.name}" in OWNED_FIELDS:
                notes.append("own")
            if permission in VERIFIED_ONLY:
                notes.append("verified")
            if policy is not None and policy.internal_only:
                notes.append("services only")
            lines.append(
                f"| `{method.name}` | `{permission or '-'}` | {', '.join(roles_granted(method))} | {', '.join(notes)} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    print(markdown(), end="")


if __name__ == "__main__":
    main()
