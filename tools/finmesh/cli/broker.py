"""Virtual hosts on the machine's RabbitMQ, for `finmesh up --events rabbitmq`, the tests and the benchmark.

A vhost is the unit of isolation on a shared broker: exchanges, queues and messages of one mesh (or one test)
never meet another's, and deleting it removes all of them at once. Created and deleted through the management
HTTP API when it answers (FINMESH_RABBITMQ_MANAGEMENT_URL, default http://127.0.0.1:15672), else with
`rabbitmqctl` (on the broker's own machine, as a user that may run it). The user given access is the one in
the AMQP URL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import aio_pika
import aiormq
from yarl import URL

LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/"


class BrokerAdminError(RuntimeError):
    """Neither the management API nor rabbitmqctl could do it."""


def amqp_url() -> str:
    """FINMESH_RABBITMQ_URL, or the local broker's default guest account."""
    return os.environ.get("FINMESH_RABBITMQ_URL") or LOCAL_URL


def _management(method: str, path: str, body: dict[str, str] | None, url: str) -> bool:
    """True if the management API did it; False if it does not answer (not enabled)."""
    amqp = URL(url)
    base = os.environ.get("FINMESH_RABBITMQ_MANAGEMENT_URL") or f"http://{amqp.host or '127.0.0.1'}:15672"
    auth = base64.b64encode(f"{amqp.user or 'guest'}:{amqp.password or 'guest'}".encode()).decode()
    request = urllib.request.Request(
        base + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=3):
            return True
    except urllib.error.HTTPError as error:
        if method == "DELETE" and error.code == 404:
            return True
        raise BrokerAdminError(f"management API {method} {path}: HTTP {error.code}") from error
    except OSError:
        return False


def _rabbitmqctl(*args: str) -> None:
    tool = shutil.which("rabbitmqctl") or ("/usr/sbin/rabbitmqctl" if os.path.exists("/usr/sbin/rabbitmqctl") else "")
    if not tool:
        raise BrokerAdminError("the RabbitMQ management API does not answer and rabbitmqctl is not installed")
    result = subprocess.run([tool, "-q", *args], capture_output=True, text=True, timeout=60, check=False)
    said = result.stderr + result.stdout
    harmless = ("delete_vhost", "does not exist"), ("add_vhost", "already exists")
    if result.returncode != 0 and not any(args[0] == verb and words in said for verb, words in harmless):
        raise BrokerAdminError(f"rabbitmqctl {args[0]} failed: {(result.stderr or result.stdout).strip()[:300]}")


def create_vhost(name: str, url: str = "") -> None:
    """Create vhost `name` (no error if it exists) and give the URL's user full rights on it."""
    url = url or amqp_url()
    user = URL(url).user or "guest"
    quoted = urllib.parse.quote(name, safe="")
    if _management("PUT", f"/api/vhosts/{quoted}", {}, url):
        permissions = {"configure": ".*", "write": ".*", "read": ".*"}
        _management("PUT", f"/api/permissions/{quoted}/{urllib.parse.quote(user, safe='')}", permissions, url)
        return
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")


def delete_vhost(name: str, url: str = "") -> None:
    """Delete vhost `name` with everything in it (no error if it is gone)."""
    url = url or amqp_url()
    if _management("DELETE", f"/api/vhosts/{urllib.parse.quote(name, safe='')}", None, url):
        return
    _rabbitmqctl("delete_vhost", name)


def local_vhost(data_dir: str) -> str:
    """The vhost of the local mesh in `data_dir`: one per data dir, like its SQLite files."""
    return "finmesh-local-" + hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:10]


def local_events_env(data_dir: str) -> dict[str, str]:
    """Create the local mesh's vhost and return the services' environment for the rabbitmq transport."""
    vhost = local_vhost(data_dir)
    create_vhost(vhost)
    return {
        "FINMESH_EVENTS_TRANSPORT": "rabbitmq",
        "FINMESH_RABBITMQ_URL": amqp_url(),
        "FINMESH_RABBITMQ_VHOST": vhost,
    }


async def _waiting(url: str, prefix: str = "finmesh") -> int:
    """Messages still in the vhost's consumer and dead-letter queues of notify (what deleting it would lose)."""
    connection = await aio_pika.connect(url, timeout=5)
    async with connection:
        waiting = 0
        for name in (f"{prefix}.notify.dead", *(f"{prefix}.notify.{k}" for k in range(64))):
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                if name != f"{prefix}.notify.dead":
                    break  # partitions are numbered from 0 without gaps
                continue
            waiting += int(queue.declaration_result.message_count or 0)
            await channel.close()
        return waiting


def clean_local_vhost(data_dir: str) -> str:
    """After the local mesh stopped: delete its vhost when no message waits in it, else keep it for the next
    `finmesh up --events rabbitmq` on this data dir (its undelivered messages are the mesh's state, as the
    outbox rows in its SQLite files are). Returns what it did, for the operator."""
    vhost = local_vhost(data_dir)
    url = str(URL(amqp_url()).with_path("/" + vhost))
    try:
        waiting = asyncio.run(_waiting(url))
    except (OSError, aiormq.exceptions.AMQPError) as error:
        return f"kept vhost {vhost} (could not count its messages: {type(error).__name__})"
    if waiting:
        return f"kept vhost {vhost}: {waiting} message(s) wait in it for the next `finmesh up --events rabbitmq`"
    delete_vhost(vhost)
    return f"deleted vhost {vhost} (nothing waited in it)"
