"""The scanner the session runs over every log and span file (tests/reliability/secret_scan.py) finds each kind of
personal data and secret it promises, masks what it reports, and leaves ordinary log lines alone.

Samples are planted in memory and in a directory outside pytest's basetemp: planted under basetemp they would
(rightly) fail the whole run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from finmesh.platform.auth.service_tokens import credential_for
from finmesh.platform.observability.logs import get_logger
from tests.auth import SERVICE_SECRET, Issuer
from tests.identity.harness import PASSWORD, new_person
from tests.reliability.secret_scan import TEST_SERVICE_SECRET, scan_text, scan_tree

ISSUER = Issuer()


def _kinds(text: str) -> list[str]:
    return [kind for _, kind, _ in scan_text(text)]


def _planted() -> dict[str, str]:
    person = new_person()
    pem = (
        Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    token = ISSUER.customer("user-1")
    return {
        "identity_number": json.dumps({"event": "registered", "note": f"id {person.id_number}"}),
        "phone": json.dumps({"event": "sms_sent", "to": person.phone}),
        "email": json.dumps({"event": "mail_sent", "to": person.email}),
        "password": json.dumps({"event": "login", "attempt": PASSWORD}),
        "jwt": json.dumps({"event": "call", "md": token}),
        "bearer": "metadata: authorization=Bearer abcdefghijklmnopqrstuvwxyz0123",
        "private_key": pem.splitlines()[0],
        "service_secret": f"FINMESH_SERVICE_SECRET={SERVICE_SECRET}",
        "service_credential": json.dumps({"argv": ["--cred", credential_for(b"another-secret", "payments")]}),
        "secret_field": json.dumps({"event": "config", "signing_secret": "hunter2-but-longer"}),
    }


@pytest.mark.parametrize("kind", list(_planted()))
def test_each_planted_kind_is_found(kind: str) -> None:
    assert kind in _kinds(_planted()[kind])


def test_identity_numbers_need_a_real_date_and_check_character() -> None:
    person = new_person()
    wrong_check = person.id_number[:17] + ("0" if person.id_number[17] != "0" else "1")
    no_date = "110105" + "19901340" + "1234"  # month 13
    assert _kinds(person.id_number) == ["identity_number"]
    assert _kinds(f"{wrong_check} {no_date}") == []


def test_ordinary_lines_and_masked_values_are_not_findings() -> None:
    person = new_person()
    ordinary = [
        json.dumps(
            {
                "event": "rpc_failed",
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "span_id": "00f067aa0ba902b7",
                "start_time": 1764137112345678901,
                "amount_minor_units": 2_000,
                "port": 50051,
                "url": "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
                "password": "***",
                "token": "***",
            }
        ),
        # What finmesh.platform.privacy.pii makes of the same person.
        json.dumps({"id": "****" + person.id_number[-4:], "phone": "****" + person.phone[-4:], "email": "***@***"}),
    ]
    assert [_kinds(line) for line in ordinary] == [[], []]


def test_what_the_service_logger_writes_is_clean() -> None:
    """The services' own log pipeline (JSON, pii masking) over personal data and secrets, as fields of their own
    name and inside free text: nothing the scan looks for survives it."""
    person = new_person()
    token = ISSUER.customer("user-1")
    fields = {
        "id_number": person.id_number,
        "phone": person.phone,
        "email": person.email,
        "password": PASSWORD,
        "token": token,
        "authorization": f"Bearer {token}",
        "service_credential": credential_for(b"s", "risk"),
    }
    text = {
        "note": f"user {person.id_number} at {person.phone} / {person.email}",
        "metadata": f"Bearer {token}",
        "raw": token,
    }
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "service.log"
        # A child process: configuring logging here would re-point the session's own log file.
        code = (
            "import sys, json\n"
            "from finmesh.platform.observability.logs import configure_logging, get_logger\n"
            f"configure_logging('svc', stream=open({str(log)!r}, 'w'))\n"
            "get_logger('t').info('sample', **json.loads(sys.stdin.read()))\n"
        )
        subprocess.run(
            [sys.executable, "-c", code], input=json.dumps({**fields, **text}), text=True, check=True, timeout=60
        )
        findings = scan_tree([Path(tmp)]).findings
        print("\nleft unmasked by the log pipeline: " + (", ".join(sorted({f.kind for f in findings})) or "nothing"))
        assert findings == []


def test_a_tree_with_a_planted_leak_fails_with_file_line_and_masked_value() -> None:
    person = new_person()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "svc").mkdir()
        leak = json.dumps({"event": "oops", "to": person.phone})
        (root / "svc" / "payments.log").write_text(f'{{"event": "ok"}}\n{leak}\n')
        (root / "svc" / "spans.jsonl").write_text('{"name": "x"}\n')
        (root / "identity.db").write_text(person.id_number)  # databases hold personal data by design: not read
        report = scan_tree([root])
    assert (report.files, len(report.findings)) == (2, 1)
    finding = report.findings[0]
    assert (finding.path.name, finding.line, finding.kind) == ("payments.log", 2, "phone")
    assert person.phone not in str(finding) and person.phone[-2:] in finding.masked


def test_scanner_knows_the_secret_tests_use() -> None:
    assert TEST_SERVICE_SECRET == SERVICE_SECRET


def test_session_log_file_is_where_in_process_services_log(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The conftest hook sends in-process services' logs to a file under basetemp, so the scan has them."""
    marker = f"scan-marker-{new_person().email.split('@')[0]}"
    get_logger("finmesh.test").warning("secret_scan_probe", note=marker)
    log = tmp_path_factory.getbasetemp() / "inprocess-services.log"
    assert marker in log.read_text(encoding="utf-8")


def test_a_leak_fails_the_pytest_run_that_wrote_it() -> None:
    """The session hook itself: a passing test whose log file holds a phone number makes pytest exit non-zero,
    naming the file and line with the number masked. (A child pytest with tests/conftest.py as its plugin, its
    basetemp outside this run's.)"""
    phone = new_person().phone
    with tempfile.TemporaryDirectory() as tmp:
        test = Path(tmp) / "test_leaks.py"
        lines = repr(f'{{"event": "sms"}}\n{{"to": "{phone}"}}\n')
        test.write_text(f"def test_writes_a_log(tmp_path):\n    (tmp_path / 'svc.log').write_text({lines})\n")
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "tests.conftest",
                "-p",
                "no:cacheprovider",
                f"--basetemp={Path(tmp) / 'base'}",
                "--rootdir",
                tmp,
                str(test),
            ],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=120,
        )
    output = child.stdout + child.stderr
    assert child.returncode == 1, output
    assert "1 passed" in output and "svc.log:2: phone" in output, output
    assert phone not in output
