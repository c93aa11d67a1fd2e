"""`finmesh token`: a bearer token from the local mesh, for callers that are not Python (grpcurl, buf curl, Postman).

Local runs only: it works from what `finmesh up` keeps in its data dir, and refuses a mesh whose identity is
not on a loopback address. Three kinds, each through a mechanism identity already has:

- a customer (default): a test user, onboarded once as `finmesh demo` onboards (the SMS codes read from the
  fake SMS provider), its phone and password kept in `<data dir>/token-users.json` (mode 0600); later runs
  log it in again (password + SMS code);
- an operator (`--role admin|support|risk_officer`): a test user of its own, given the role by the operator
  bootstrap (`python -m finmesh.identity.admin grant-role`, which needs the identity database: here the
  mesh's SQLite file), then logged in, so the token carries the role as any admin's would;
- a service (`--service payments`): GetServiceToken with the service's credential, derived from the mesh's
  service secret in the data dir, as the services themselves get theirs.

The token alone goes to stdout (`TOKEN=$(finmesh token)`); `-o json` adds its subject, roles and expiry,
`-o subject` prints the user id alone (what OpenAccount's owner_id wants).
Nothing here logs a token, a password or a phone number.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import secrets
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from finmesh.cli.mesh import FAKES_FILE, MESH_FILE, load_fakes, load_targets
from finmesh.cli.slice import Handset, login, new_people, onboard
from finmesh.identity.admin import grant_role
from finmesh.identity.v1 import identity_service_pb2 as id_pb
from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.platform.auth.service_tokens import KNOWN_SERVICES, credential_for
from finmesh.platform.auth.tokens import parse

OPERATOR_ROLES = ("admin", "support", "risk_officer")
USERS_FILE = "token-users.json"
SECRET_FILE = "service-secret.key"  # finmesh.platform.auth.service_tokens.mesh_secret writes it
_CODE_WAIT_SECONDS = 10.0


class Refused(Exception):
    """Why no token is given: not a local mesh, or the mesh's local state is missing."""


@dataclass(frozen=True)
class IssuedToken:
    token: str
    subject: str
    roles: list[str]
    expires_at: str  # RFC 3339, UTC

    @classmethod
    def of(cls, token: str) -> IssuedToken:
        # Our own token, just issued: read, not verified (the services verify it).
        claims = parse(token).claims
        expires = datetime.fromtimestamp(int(claims["exp"]), UTC).isoformat().replace("+00:00", "Z")
        return cls(token, str(claims["sub"]), list(claims["roles"]), expires)


def is_loopback(target: str) -> bool:
    host = target.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def identity_target(data_dir: Path) -> str:
    """Identity of the mesh `finmesh up` runs in `data_dir`: refused unless there is one, on loopback."""
    target = load_targets(data_dir).get("identity", "")
    if not target:
        raise Refused(f"no local mesh recorded in {data_dir / MESH_FILE}: start one with `finmesh up` (or `make run`)")
    if not is_loopback(target):
        raise Refused(f"identity at {target} is not on this machine: `finmesh token` serves local meshes only")
    return target


async def service_token(data_dir: Path, target: str, service: str) -> IssuedToken:
    secret_path = data_dir / SECRET_FILE
    if not secret_path.exists():
        raise Refused(f"no mesh service secret in {secret_path}: is this the data dir `finmesh up` runs in?")
    credential = credential_for(secret_path.read_bytes().strip(), service)
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await id_grpc.IdentityServiceStub(channel).GetServiceToken(
            id_pb.GetServiceTokenRequest(service=service, credential=credential), timeout=10
        )
    return IssuedToken.of(reply.access_token)


def _load_users(data_dir: Path) -> dict[str, dict[str, str]]:
    path = data_dir / USERS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _save_users(data_dir: Path, users: dict[str, dict[str, str]]) -> None:
    # The test users' passwords and phones: readable by the developer only.
    fd = os.open(data_dir / USERS_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(users, f, indent=2)


async def user_token(data_dir: Path, target: str, name: str, role: str) -> IssuedToken:
    """The test user `name` (onboarded on first use), with operator `role` if one is asked, logged in."""
    sms = load_fakes(data_dir).get("sms")
    if sms is None:
        raise Refused(f"no fake SMS provider recorded in {data_dir / FAKES_FILE}: start the mesh with `finmesh up`")
    users = _load_users(data_dir)
    run = secrets.token_hex(4)
    async with (
        grpc.aio.insecure_channel(target) as channel,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        identity = id_grpc.IdentityServiceStub(channel)
        handset = Handset(sms, http)
        user = users.get(name)
        token = await _relogin(identity, handset, user, run) if user else None
        if user is None or token is None:  # first use, or the mesh's data was wiped since
            user, token = await _onboard(identity, handset, run)
            users[name] = user
            _save_users(data_dir, users)
            print(f"finmesh token: onboarded test user {name!r} ({user['user_id']})", file=sys.stderr)
        if role and role not in IssuedToken.of(token).roles:
            await grant_role(_identity_database(data_dir), user["user_id"], role.upper())
            # Roles are read when a token is issued: log in again.
            tokens = await login(identity, handset, user["phone"], user["password"], run, 1, _CODE_WAIT_SECONDS)
            token = tokens.access_token
    return IssuedToken.of(token)


async def _relogin(identity: Any, handset: Handset, user: dict[str, str], run: str) -> str | None:
    try:  # (idempotency keys of their own: the onboarding after a refusal must not replay it)
        tokens = await login(identity, handset, user["phone"], user["password"], run, 2, _CODE_WAIT_SECONDS)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return None  # no such login any more: onboard anew
        raise
    return str(tokens.access_token)


async def _onboard(identity: Any, handset: Handset, run: str) -> tuple[dict[str, str], str]:
    """A new test user, through all three onboarding checks and a login: (what to log in with, its token)."""
    person, _ = new_people()
    password = f"finmesh token {secrets.token_urlsafe(12)}"
    user_id, token = await onboard(identity, handset, person, password, run, 0, _CODE_WAIT_SECONDS)
    return {"user_id": user_id, "phone": person.phone, "password": password}, token


def _identity_database(data_dir: Path) -> str:
    path = data_dir / "identity.db"
    if not path.exists():
        raise Refused(f"no identity database at {path}: operator roles are granted in the local mesh's own database")
    return f"sqlite+aiosqlite:///{path}"


def cmd_token(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    try:
        target = identity_target(data_dir)
        if args.service:
            issued = asyncio.run(service_token(data_dir, target, args.service))
        else:
            name = args.user or (f"operator-{args.role}" if args.role else "customer")
            issued = asyncio.run(user_token(data_dir, target, name, args.role or ""))
    except Refused as error:
        print(f"finmesh token: refused: {error}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as error:
        print(f"finmesh token: {error.code().name}: {error.details()}", file=sys.stderr)
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            print("is the mesh running? Start it with `finmesh up` (or `make run`).", file=sys.stderr)
        return 1
    except (TimeoutError, OSError, aiohttp.ClientError) as error:
        print(f"finmesh token: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(asdict(issued)))
    elif args.output == "subject":
        print(issued.subject)
    else:
        print(issued.token)
    return 0


def add_parser(sub: Any) -> None:
    token = sub.add_parser(
        "token",
        help="print a bearer token from the local mesh (a test customer, an operator role or a service)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    kind = token.add_mutually_exclusive_group()
    kind.add_argument("--role", choices=OPERATOR_ROLES, help="an operator's token with this role")
    kind.add_argument("--service", choices=KNOWN_SERVICES, help="a service token (role service) for this service")
    token.add_argument(
        "--user",
        default="",
        help="which test user (any name; default: 'customer', or 'operator-<role>' with --role)",
    )
    token.add_argument(
        "-o",
        "--output",
        choices=("token", "json", "subject"),
        default="token",
        help="the token alone (default), JSON with its subject, roles and expiry, or the subject alone",
    )
    token.set_defaults(func=cmd_token)
