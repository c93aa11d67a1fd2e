"""The README's "Call it from anywhere", run as written: a real `finmesh up`, `finmesh token` as a subprocess, then
the real `buf curl` opens wallets, tops one up and pays with that token. Also what `finmesh token` refuses, the
operator and service tokens it gives, and the JWKS `finmesh up` announces."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from finmesh.platform.auth.tokens import AUDIENCE, ISSUER
from tests.e2e.finmesh_up import FinmeshUp

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The README's addresses are `make run`'s (base port 50051); the test's mesh listens on free ports.
README_PAYMENTS = "127.0.0.1:50052"


def readme_walkthrough() -> str:
    """The bash block under "### Call it from anywhere"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Call it from anywhere", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match is not None, "README's Call it from anywhere has no bash block"
    return match.group(1)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FinmeshUp, Path]]:
    """`finmesh up` with its data in <workdir>/.finmesh: `finmesh token`'s default, as in a clone."""
    workdir = tmp_path_factory.mktemp("clone")
    up = FinmeshUp(workdir / ".finmesh")
    try:
        up.wait_ready()
        yield up, workdir
    finally:
        up.close()


def finmesh_token(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "finmesh"), "token", *args], cwd=workdir, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_readme_pays_with_buf_curl_and_a_finmesh_token(mesh: tuple[FinmeshUp, Path]) -> None:
    up, workdir = mesh
    script = readme_walkthrough()
    assert README_PAYMENTS in script and ".venv/bin/finmesh token" in script and ".venv/bin/buf curl" in script
    script = script.replace(README_PAYMENTS, up.targets()["payments"]).replace(".venv/bin/", f"{BIN}/")
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # The last answer is the payment; the one before it the top-up.
    answers = [json.loads(a) for a in re.findall(r"^\{.*?^\}", run.stdout, re.S | re.M)]
    top_up, payment = answers[-2], answers[-1]["payment"]
    assert top_up["operation"]["status"] == "CHANNEL_OPERATION_STATUS_SUCCEEDED"
    assert payment["status"] == "PAYMENT_STATUS_CAPTURED"
    assert payment["captured"] == {"currencyCode": "CNY", "minorUnits": "2500"}
    assert payment["payerAccountId"] == top_up["account"]["accountId"] != payment["payeeAccountId"]


def test_token_kinds_verify_against_the_announced_jwks(mesh: tuple[FinmeshUp, Path]) -> None:
    """A customer's token (the same user again), an admin's and a service's, each verified by PyJWT against the
    JWKS URL `finmesh up` printed."""
    up, workdir = mesh
    jwks_url = up.services["identity"].jwks
    assert jwks_url.startswith("http://127.0.0.1:") and jwks_url.endswith("/.well-known/jwks.json")
    with urllib.request.urlopen(jwks_url, timeout=5) as reply:
        assert reply.headers["Cache-Control"] == "public, max-age=60"
    client = jwt.PyJWKClient(jwks_url)

    def issued(*args: str) -> dict[str, Any]:
        run = finmesh_token(workdir, "-o", "json", *args)
        assert run.returncode == 0, run.stderr
        out: dict[str, Any] = json.loads(run.stdout)
        claims = jwt.decode(
            out["token"],
            client.get_signing_key_from_jwt(out["token"]),
            algorithms=["EdDSA"],
            audience=AUDIENCE,
            issuer=ISSUER,
        )
        assert (claims["sub"], claims["roles"]) == (out["subject"], out["roles"])
        return out

    customer = issued()
    assert customer["roles"] == ["personal"] and issued()["subject"] == customer["subject"]  # reused, not new
    admin = issued("--role", "admin")
    assert admin["roles"] == ["admin", "personal"] and admin["subject"] != customer["subject"]
    assert issued("--service", "payments")["subject"] == "service:payments"
    assert (workdir / ".finmesh" / "token-users.json").stat().st_mode & 0o077 == 0


def test_token_refuses_without_a_local_mesh(mesh: tuple[FinmeshUp, Path], tmp_path: Path) -> None:
    """No mesh recorded in the data dir, or one whose identity is not on loopback: refused, nothing on stdout."""
    empty = finmesh_token(tmp_path)
    assert (empty.returncode, empty.stdout) == (2, "") and "no local mesh recorded" in empty.stderr
    _, workdir = mesh
    remote = tmp_path / "remote" / ".finmesh"
    remote.mkdir(parents=True)
    for name in ("fakes.json", "service-secret.key"):
        (remote / name).write_bytes((workdir / ".finmesh" / name).read_bytes())
    (remote / "mesh.json").write_text(json.dumps({"targets": {"identity": "10.1.2.3:50051"}}))
    refused = finmesh_token(remote.parent, "--service", "payments")
    assert (refused.returncode, refused.stdout) == (2, "") and "not on this machine" in refused.stderr
